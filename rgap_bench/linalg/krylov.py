"""A normal operator's rank at rcond and its null space without forming it: random probes solved by block PCG.

R-GAP needs, for a layer whose gradient rows alone do not prove full rank, the numerical rank of G = A^T A
(eigenvalues above t = rcond * lambda_max) and, when it is deficient, an orthonormal basis of the undetermined
directions. The dense path factorises G (8 n^2 bytes, in place). Here p random vectors x0 are probed: PCG (the
layer's own block-Jacobi preconditioner, all columns in one batched operator product) solves the consistent systems
G y = G x0, so that e = x0 - y has G e = r, the PCG residual. Every eigen-direction of G with eigenvalue lambda
keeps at most |r| / lambda of e, while a null direction keeps its whole share of x0 (PCG cannot change it: it
never sees it in G x0). A Rayleigh-Ritz step on span(e_1..e_p) then separates the two: Ritz values at most t are
null directions (returned with their residuals |G v|), and with none of them every Ritz value is an upper bound
on lambda_min above t. This is the matrix-free form of the dense path's block inverse iteration (one step, PCG
instead of a Cholesky factor) and rests on the same premise: a random block has a share of every null direction.
The layer's own right-hand side rides in the same block, so the solve and the verdict share every product.

torch.lobpcg was tried first (and a hand-written LOBPCG): on CNN6's conv1 the bottom of the spectrum is a tight
cluster, its Ritz pairs converged after ~200 block iterations (~5 s), and the 280 null directions of CNN6-d's conv2
did not converge at all in 500; the probe needs only the iterations of one PCG solve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

BlockOperator = Callable[[Tensor], Tensor]  # (n, m) -> (n, m)


@dataclass
class BlockPCGResult:
    x: Tensor  # (n, m)
    iterations: int
    residual_rel: Tensor  # (m,) |rhs - G x| / |rhs| per column


def block_pcg(
    apply: BlockOperator,
    rhs: Tensor,
    precondition: BlockOperator,
    *,
    tol: Tensor | float,
    max_iter: int,
    check_every: int = 10,
) -> BlockPCGResult:
    """Independent PCG runs on the columns of `rhs` (column j to relative residual tol[j]), sharing each batched
    product; converged columns leave the block at the next check, keeping the solution they reached."""
    m = rhs.shape[1]
    tol = torch.as_tensor(tol, dtype=rhs.dtype, device=rhs.device).expand(m)
    x = torch.zeros_like(rhs)
    ref = rhs.norm(dim=0).clamp_min(1e-300)
    rel = torch.ones_like(ref)
    cols = torch.arange(m, device=rhs.device)  # the columns still iterated
    xa, r = x.clone(), rhs.clone()
    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum(0)
    it = 0
    while cols.numel() and it < max_iter:
        q = apply(p)
        pq = (p * q).sum(0)
        alpha = torch.where(pq > 0, rz / torch.where(pq > 0, pq, 1.0), 0.0)
        xa = xa + alpha * p
        r = r - alpha * q
        z = precondition(r)
        rz_new = (r * z).sum(0)
        p = z + torch.where(rz != 0, rz_new / torch.where(rz != 0, rz, 1.0), 0.0) * p
        rz = rz_new
        it += 1
        if it % check_every == 0 or it == max_iter:
            rel[cols] = r.norm(dim=0) / ref[cols]
            x[:, cols] = xa
            keep = rel[cols] > tol[cols]
            cols, xa, r, z, p, rz = cols[keep], xa[:, keep], r[:, keep], z[:, keep], p[:, keep], rz[keep]
    x[:, cols] = xa
    return BlockPCGResult(x, it, rel)


def orthonormal(y: Tensor, drop: float = 1e-12) -> Tensor:
    """Orthonormal columns spanning y (SVQB twice: columns normalised, eigh of the Gram matrix, directions below
    `drop` of the largest dropped)."""
    for _ in range(2):
        norms = y.norm(dim=0)
        y = y[:, norms > 0] / norms[norms > 0]
        if y.shape[1] == 0:
            return y
        vals, vecs = torch.linalg.eigh(y.T @ y)
        big = vals > drop * vals[-1]
        y = y @ (vecs[:, big] / vals[big].sqrt())
    return y


@dataclass
class NullProbe:
    """What the probe proved: Ritz values of G on span(e) (ascending) with residuals, and the null basis."""

    ritz: Tensor  # (k,) Ritz values of G on the orthonormalised probe errors
    residuals: Tensor  # (k,) |G v - theta v|
    null_basis: Tensor  # (n, d) Ritz vectors with theta <= threshold
    threshold: float

    @property
    def deficiency(self) -> int:
        return self.null_basis.shape[1]

    @property
    def lambda_min(self) -> float | None:
        """The smallest Ritz value above the threshold (an upper bound on the smallest non-null eigenvalue)."""
        above = self.ritz[self.ritz > self.threshold]
        return float(above[0]) if above.numel() else None

    @property
    def lambda_min_residual(self) -> float | None:
        above = self.residuals[self.ritz > self.threshold]
        return float(above[0]) if above.numel() else None


def null_probe(apply: BlockOperator, probes: Tensor, solved: Tensor, threshold: float) -> NullProbe:
    """Rayleigh-Ritz on the probe errors e = probes - solved (solved: PCG's solutions of G y = G probes)."""
    basis = orthonormal(probes - solved)
    image = apply(basis)
    gram = basis.T @ image
    ritz, vecs = torch.linalg.eigh((gram + gram.T) / 2)
    vectors, images = basis @ vecs, image @ vecs
    residuals = (images - vectors * ritz).norm(dim=0)
    null = ritz <= threshold
    return NullProbe(ritz, residuals, vectors[:, null], threshold)
