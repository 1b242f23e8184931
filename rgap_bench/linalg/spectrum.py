"""Rank, smallest eigenvalue and null space of a dense normal matrix from one Cholesky factorisation.

An R-GAP layer needs the rank of its normal matrix G = A^T A and, when it is deficient, the few undetermined
directions. A full eigen-decomposition gives both but costs ~20x a Cholesky factorisation (2.7 s against 0.14 s
at n = 3468 on 2 CPU cores). Here G + s I (s = rcond * lambda_max) is factorised once and block inverse iteration
with it finds the eigenvectors whose eigenvalues are below the rank threshold: they are amplified by 1/s, every
direction above the threshold by less than 1/(2 s). The block grows until it holds more than the null space, so
the count is exact whenever the spectrum has a gap at the threshold (the eigen-decomposition's count needs the
same gap to be meaningful).

The rank analysis (`rgap_bench.rank`) asks a simpler question of a matrix it can afford to factorise: is it full
rank at rcond, and how far from the threshold? `smallest_eigenvalue_rel` answers with one plain Cholesky, and
`eigen_rank` with a full eigen-decomposition where the Cholesky fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import scipy.linalg
import torch
from torch import Tensor

from rgap_bench.linalg.inplace_cholesky import InPlaceCholesky


def cholesky_solve(rhs: Tensor, chol: Tensor) -> Tensor:
    """(L L^T)^-1 rhs. On CPU through LAPACK's potrs (scipy): torch's cholesky_solve and solve_triangular take
    0.1-1 s for one right-hand side at n = 3000 on 2 cores, potrs 5 ms."""
    if chol.device.type == "cpu":
        return torch.from_numpy(scipy.linalg.cho_solve((chol.numpy(), True), rhs.numpy(), check_finite=False))
    return torch.cholesky_solve(rhs, chol)


@dataclass
class LowSpectrum:
    top: float  # largest eigenvalue (power-iteration estimate)
    shift: float  # s in G + s I
    chol: Tensor  # lower Cholesky factor of G + s I
    rank: int
    sigma_min_rel: float  # sqrt(lambda_min / lambda_max); 0 when rank-deficient
    null_basis: Tensor  # (n, n - rank) orthonormal columns, empty when full rank
    in_place: InPlaceCholesky | None = None  # when the factor overwrote G (low_spectrum's `overwrite`)

    def solve(self, rhs: Tensor, steps: int = 4, gram: Tensor | Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Minimum-norm solution of G x = rhs: shifted solves refined against G (the matrix or a function
        applying it), null directions projected out."""
        vec = rhs.ndim == 1
        r = rhs[:, None] if vec else rhs
        x = self._project(cholesky_solve(r, self.chol))
        if gram is not None:
            apply = gram.__matmul__ if isinstance(gram, Tensor) else gram
            for _ in range(steps):
                x = x + self._project(cholesky_solve(r - apply(x), self.chol))
        return x[:, 0] if vec else x

    def _project(self, x: Tensor) -> Tensor:
        if self.null_basis.shape[1] == 0:
            return x
        return x - self.null_basis @ (self.null_basis.T @ x)


def largest_eigenvalue(
    gram: Tensor | Callable[[Tensor], Tensor],
    n: int | None = None,
    *,
    like: Tensor | None = None,
    steps: int = 8,
    block: int = 4,
    seed: int = 0,
) -> float:
    """Block power iteration; a few percent of accuracy is all a relative rank threshold needs.

    `gram` is the matrix or a function applying it to (n, block) columns (pass `n` and a tensor `like` for the
    dtype and device): a matrix-free operator is much cheaper than reading a large dense matrix 9 times."""
    apply = gram.__matmul__ if isinstance(gram, Tensor) else gram
    ref = gram if isinstance(gram, Tensor) else like
    n = gram.shape[0] if isinstance(gram, Tensor) else n
    gen = torch.Generator(device=ref.device).manual_seed(seed)
    v = torch.randn(n, block, dtype=ref.dtype, device=ref.device, generator=gen)
    for _ in range(steps):
        v = torch.linalg.qr(apply(v)).Q
    return float(torch.linalg.eigvalsh(v.T @ apply(v))[-1])


def eigen_rank(gram: Tensor, rcond: float) -> tuple[int, Tensor]:
    """Rank of a symmetric PSD matrix (eigenvalues above rcond * lambda_max) by a full eigen-decomposition, and its
    eigenvalues in ascending order: the reference where no cheaper test applies."""
    vals = torch.linalg.eigvalsh(gram)
    top = float(vals[-1]) if vals.numel() else 0.0
    return (int((vals > rcond * top).sum()) if top > 0 else 0), vals


def smallest_eigenvalue_rel(gram: Tensor, rcond: float, steps: int = 25, start: Tensor | None = None) -> float | None:
    """sqrt(lambda_min / lambda_max) of a symmetric PSD matrix when it is full rank at rcond, else None.

    One unshifted Cholesky factorisation: it fails on a clearly singular matrix, and inverse iteration with it
    measures how far a factorisable one is from the threshold (lambda_max by power iteration in the same loop, from
    the same `start`, default a seeded normal vector). An estimate: `steps` iterations, a few percent at worst."""
    chol, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        return None
    if start is None:
        gen = torch.Generator(device=gram.device).manual_seed(0)
        start = torch.randn(gram.shape[0], dtype=gram.dtype, device=gram.device, generator=gen)
    v = u = start.to(gram)
    for _ in range(steps):
        v = cholesky_solve((v / v.norm())[:, None], chol)[:, 0]
        u = gram @ (u / u.norm())
    lam_min, lam_max = 1.0 / float(v.norm()), float(u.norm())
    ratio = lam_min / lam_max if lam_max > 0 else 0.0
    return ratio**0.5 if ratio > rcond else None


def low_spectrum(
    gram: Tensor,
    rcond: float,
    *,
    null_hint: int = 0,
    iterations: int = 4,
    max_rounds: int = 8,
    seed: int = 0,
    top: float | None = None,
    overwrite: bool = False,
) -> LowSpectrum:
    """Rank (eigenvalues above rcond * lambda_max), sigma_min and null basis of a symmetric PSD matrix.

    `null_hint` (e.g. the counting bound's deficiency) sizes the first block; a block found entirely null is
    doubled, keeping the vectors already iterated. `top`: lambda_max when the caller has it (else estimated here).
    `overwrite` (host tensors): factorise `gram` in place (`InPlaceCholesky`), so one n x n array is alive instead
    of three; `gram` then holds the factor, and the caller must not use it as G afterwards.
    """
    n = gram.shape[0]
    top = largest_eigenvalue(gram, seed=seed) if top is None else top
    if top <= 0.0:
        eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
        return LowSpectrum(0.0, 1.0, eye, 0, 0.0, eye)
    in_place = InPlaceCholesky(gram) if overwrite and gram.device.type == "cpu" else None
    shift = rcond * top
    for _ in range(6):
        if in_place is not None:
            ok = in_place.factor(shift)
            chol = in_place.chol
        else:
            shifted = gram.clone()  # no identity matrix: at n = 13068 each n x n copy is 1.4 GB
            shifted.diagonal().add_(shift)
            chol, info = torch.linalg.cholesky_ex(shifted)
            del shifted
            ok = int(info) == 0
        if ok:
            break
        shift *= 10.0  # rounding made G + s I indefinite: a larger shift, still far below the spectrum's bulk
    else:
        raise RuntimeError(f"Cholesky of the shifted {n}x{n} normal matrix failed; the matrix is not PSD")
    gram_times = gram.__matmul__ if in_place is None else in_place.gram_times
    null, ritz = block_inverse_iteration(
        lambda block: cholesky_solve(block, chol), gram_times, rcond * top, like=gram, null_hint=null_hint,
        iterations=iterations, max_rounds=max_rounds, seed=seed,
    )  # fmt: skip
    rank = n - null.shape[1]
    sigma_min = (max(float(ritz[0]), 0.0) / top) ** 0.5 if rank == n else 0.0
    return LowSpectrum(top, shift, chol, rank, sigma_min, null, in_place)


def block_inverse_iteration(
    inverse: Callable[[Tensor], Tensor],
    gram_times: Callable[[Tensor], Tensor],
    threshold: float,
    *,
    like: Tensor,
    null_hint: int = 0,
    iterations: int = 4,
    max_rounds: int = 8,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """The eigenvectors of G below `threshold` and the Ritz values, by block inverse iteration with `inverse`
    ((G + s I)^-1 on (n, k) blocks) and a Rayleigh-Ritz step with `gram_times` (G on blocks). The block starts at
    `null_hint` + 8 columns (at least 16) and doubles, keeping the vectors already iterated, while it is found
    entirely below: the null space may be larger than the block. `like`: an (n, n) or (n, ...) tensor for n, the
    dtype and the device."""
    n = like.shape[0]
    gen = torch.Generator(device=like.device).manual_seed(seed)
    basis = like.new_zeros((n, 0))
    size = min(n, max(16, null_hint + 8))
    while True:
        fresh = torch.randn(n, size - basis.shape[1], dtype=like.dtype, device=like.device, generator=gen)
        basis = torch.cat([basis, fresh], dim=1)
        for _ in range(iterations):
            basis = torch.linalg.qr(inverse(basis)).Q
        ritz, vectors = torch.linalg.eigh(basis.T @ gram_times(basis))
        small = ritz <= threshold
        max_rounds -= 1
        if int(small.sum()) < size or size == n or max_rounds == 0:
            return basis @ vectors[:, small], ritz
        size = min(n, 2 * size)


@dataclass
class NormalFactor:
    """A factorised normal matrix: `solve` gives the (minimum-norm) solution; rank etc. when they were measured."""

    solve: Callable[[Tensor], Tensor]
    rank: int | None
    sigma_min_rel: float | None
    label: str
    null_basis: Tensor | None  # (n, n - rank), None when full rank or not measured


def factor_normal(
    gram: Tensor,
    rcond: float,
    want_rank: bool,
    null_hint: int = 0,
    refine_steps: int = 4,
    top: float | None = None,
    overwrite: bool = False,
) -> NormalFactor:
    """Plain Cholesky when no rank is wanted (and it succeeds); otherwise one shifted Cholesky that also yields the
    rank and the null space, plus an unshifted one when the matrix is full rank but close to the threshold.
    `top`: lambda_max of `gram` when the caller has it (e.g. from a matrix-free operator). `overwrite` (host
    tensors): every factor is written over `gram` (`InPlaceCholesky`: one n x n array at the peak, not three)."""

    def cholesky_solver(chol: Tensor) -> Callable[[Tensor], Tensor]:
        return lambda r: cholesky_solve(r[:, None], chol)[:, 0] if r.ndim == 1 else cholesky_solve(r, chol)

    overwrite = overwrite and gram.device.type == "cpu"
    if not want_rank:
        if overwrite:
            plain = InPlaceCholesky(gram)
            if plain.factor(0.0):
                return NormalFactor(cholesky_solver(plain.chol), None, None, "dense-cholesky", None)
        else:
            chol, info = torch.linalg.cholesky_ex(gram)
            if int(info) == 0:
                return NormalFactor(cholesky_solver(chol), None, None, "dense-cholesky", None)
    spectrum = low_spectrum(gram, rcond, null_hint=null_hint, top=top, overwrite=overwrite)
    full = spectrum.rank == gram.shape[0]
    if full and spectrum.sigma_min_rel**2 < 1e3 * spectrum.shift / spectrum.top:
        # The shifted factor would converge slowly this close to the threshold: factorise G itself.
        if spectrum.in_place is not None:
            if spectrum.in_place.factor(0.0):
                chol = spectrum.in_place.chol
                return NormalFactor(
                    cholesky_solver(chol), spectrum.rank, spectrum.sigma_min_rel, "dense-cholesky", None
                )
            spectrum.in_place.factor(spectrum.shift)  # G itself failed: back to the shifted factor
        else:
            chol, info = torch.linalg.cholesky_ex(gram)
            if int(info) == 0:
                return NormalFactor(
                    cholesky_solver(chol), spectrum.rank, spectrum.sigma_min_rel, "dense-cholesky", None
                )
    label = "dense-shifted-cholesky" + ("" if full else "-pinv")  # refined against G in every solve
    product = gram if spectrum.in_place is None else spectrum.in_place.gram_times

    def solve(r: Tensor) -> Tensor:
        return spectrum.solve(r, steps=refine_steps, gram=product)

    return NormalFactor(solve, spectrum.rank, spectrum.sigma_min_rel, label, None if full else spectrum.null_basis)
