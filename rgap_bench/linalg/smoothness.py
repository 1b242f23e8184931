"""A smoothness prior on the image layer's least squares, min ||A x - b||^2 + lam ||D x||^2, lam by GCV.

Why: the image layer (the first conv) is held mostly by its weight rows W x = z, and z = sigma^-1(x_1) carries the
error of every layer above, amplified by the inverse LeakyReLU (1/slope on negative entries). Its gradient rows are
few (the per-channel matrix K is wide), so the deconvolution passes z's error on, several times larger, mostly in
high-frequency directions that no row pins down. Images are smooth where that error is rough: a penalty on the
discrete gradient D (per channel, differences of horizontal and vertical neighbours) damps exactly those directions
and leaves what the rows determine well. It is a prior attackers use (total variation in gradient matching).

lam is chosen by generalised cross-validation, G(lam) = ||A x_lam - b||^2 / (m - tr H_lam)^2 with
tr H_lam = n - lam tr((N + lam L)^-1 L) (N = A^T A, L = D^T D) estimated by Hutchinson probes, so no noise level is
needed; every solve is matrix-free PCG with the layer's own block-Jacobi preconditioner (adding lam L_c to its
per-channel blocks made them dense: the same iterations, each 10x slower). lam = 0 is a candidate, so a system
whose residual is noise-free keeps its plain solve.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rgap_bench.linalg.operators import BlockJacobi, ConvSystem
from rgap_bench.linalg.pcg import pcg

# lam / (mean diagonal of N): a half-decade grid; on cnn6's image layer GCV's minimum moved from ~3e-2 (relative
# noise 1e-3) to > 3e-1 (1e-2), which the grid brackets with room on both sides
GRID = tuple(10.0 ** (e / 2) for e in range(-8, 5))
PROBES = 3  # Hutchinson probes per lam: the GCV curve is flat near its minimum, so a rough trace suffices
PROBE_TOL = 1e-6  # the probes' PCG tolerance (a trace estimate, not a solution)


def difference_normal(x: Tensor) -> Tensor:
    """D^T D x for x (C, H, W): D stacks the horizontal and vertical neighbour differences of each channel."""
    dh = x[:, :, 1:] - x[:, :, :-1]
    dv = x[:, 1:, :] - x[:, :-1, :]
    out = torch.zeros_like(x)
    out[:, :, 1:] += dh
    out[:, :, :-1] -= dh
    out[:, 1:, :] += dv
    out[:, :-1, :] -= dv
    return out


@dataclass(frozen=True)
class SmoothChoice:
    """The chosen prior weight and what choosing it cost."""

    lam_rel: float  # lam / mean diagonal of the scaled normal matrix (0: the plain solve won)
    gcv: float  # G at the choice
    evaluations: int  # lam values tried
    iterations: int  # PCG iterations, probes included


def rows(system: ConvSystem) -> int:
    """The number of non-zero rows of the scaled system (a zero error or a dead output leaves zero rows)."""
    channels = system.geom.in_shape[0]
    grad_rows = int((system.grad_scale != 0).sum()) * channels
    return grad_rows + (int((system.weight_scale != 0).sum()) if system.z is not None else 0)


def mean_diagonal(system: ConvSystem) -> float:
    """trace(N) / n: the scale lam is measured in, so that lam_rel means the same on any layer size."""
    _, h, w = system.geom.in_shape
    return float(system.weight_diagonal().mean()) + float((system.channel_matrix() ** 2).sum()) / (h * w)


def smooth_solve(
    system: ConvSystem, x0: Tensor, *, tol: float, max_iter: int, lam_rel: float | None = None, seed: int = 0
) -> tuple[Tensor, SmoothChoice]:
    """The layer's input under the smoothness prior, from its plain solve x0: lam by GCV over `GRID` (scanned
    upwards, stopped two steps past the minimum), or the fixed `lam_rel` when given."""
    n, m = x0.numel(), rows(system)
    scale = mean_diagonal(system)
    rhs = system.normal_rhs()
    gen = torch.Generator().manual_seed(seed)
    probes = [(torch.randint(0, 2, x0.shape, generator=gen) * 2 - 1).to(x0) for _ in range(PROBES)]
    iterations = 0
    precondition = BlockJacobi(system)

    def solve(rel: float, start: Tensor) -> tuple[Tensor, float]:
        nonlocal iterations
        lam = rel * scale

        def normal(v: Tensor) -> Tensor:
            return system.normal(v) + lam * difference_normal(v)

        result = pcg(normal, rhs, precondition, tol=tol, max_iter=max_iter, x0=start)
        iterations += result.iterations
        trace = 0.0
        for v in probes:
            probe = pcg(normal, difference_normal(v), precondition, tol=PROBE_TOL, max_iter=max_iter)
            iterations += probe.iterations
            trace += float((v * probe.x).sum()) / len(probes)
        dof = m - n + lam * trace
        return result.x, system.residual_norms2(result.x)[0] / dof**2 if dof > 0 else float("inf")

    if lam_rel is not None:
        x, score = solve(lam_rel, x0)
        return x, SmoothChoice(lam_rel, score, 1, iterations)
    best = (0.0, x0, system.residual_norms2(x0)[0] / (m - n) ** 2 if m > n else float("inf"))
    x, worse, tried = x0, 0, 0
    for rel in GRID:
        x, score = solve(rel, x)
        tried += 1
        if score < best[2]:
            best, worse = (rel, x, score), 0
        else:
            worse += 1
            if worse == 2:
                break
    return best[1], SmoothChoice(best[0], best[2], tried, iterations)
