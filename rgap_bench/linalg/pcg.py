"""Preconditioned conjugate gradients for the matrix-free normal equations of `rgap_bench.linalg.operators`
(apart so that operators.py stays one job: the layer systems)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PCGResult:
    x: Tensor
    iterations: int
    normal_residual_rel: float


def pcg(
    normal, rhs: Tensor, precondition, *, tol: float, max_iter: int, x0: Tensor | None = None, check_every: int = 10
) -> PCGResult:
    """Preconditioned conjugate gradients on N x = rhs, keeping scalars on the device between checks."""
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - normal(x) if x0 is not None else rhs.clone()
    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum()
    ref = rhs.norm().clamp_min(1e-300)
    it = 0
    rel = float(r.norm() / ref)
    while it < max_iter and rel > tol:
        q = normal(p)
        alpha = rz / (p * q).sum()
        x = x + alpha * p
        r = r - alpha * q
        z = precondition(r)
        rz_new = (r * z).sum()
        p = z + (rz_new / rz) * p
        rz = rz_new
        it += 1
        if it % check_every == 0 or it == max_iter:
            rel = float(r.norm() / ref)
    return PCGResult(x, it, float(r.norm() / ref))


@dataclass
class BatchPCGResult:
    x: Tensor  # (B, ...)
    iterations: list[int]
    normal_residual_rel: list[float]


def pcg_many(system, rhs: Tensor, precondition, *, tol: float, max_iter: int, x0: Tensor,
             check_every: int = 10) -> BatchPCGResult:  # fmt: skip
    """`pcg` on B independent systems at once: `system.normal` and `precondition` act on (B, ...) and both have
    `subset(indices)`. Every sample has its own step sizes and is checked at the same iterations as `pcg` checks
    it, so it stops where `pcg` alone would; a converged sample leaves the batch (the operators are cut down to the
    rest), so it stops changing and costs nothing more. x0 is required: zeros give `pcg`'s start without one."""
    b = rhs.shape[0]
    ref = rhs.reshape(b, -1).norm(dim=1).clamp_min(1e-300)
    x = x0.clone()
    r = rhs - system.normal(x)
    iterations = torch.zeros(b, dtype=torch.long)
    start = r.reshape(b, -1).norm(dim=1) / ref > tol
    active = torch.nonzero(start if max_iter > 0 else torch.zeros_like(start))[:, 0]
    xa, ra = x[active], r[active]
    op, pre = system.subset(active), precondition.subset(active)
    za = pre(ra)
    pa = za.clone()
    shape = (-1,) + (1,) * (rhs.dim() - 1)
    rz = (ra * za).reshape(len(active), -1).sum(1)
    it = 0
    while len(active) and it < max_iter:
        q = op.normal(pa)
        alpha = (rz / (pa * q).reshape(len(active), -1).sum(1)).reshape(shape)
        xa = xa + alpha * pa
        ra = ra - alpha * q
        za = pre(ra)
        rz_new = (ra * za).reshape(len(active), -1).sum(1)
        pa = za + (rz_new / rz).reshape(shape) * pa
        rz = rz_new
        it += 1
        if it % check_every == 0 or it == max_iter:
            done = (ra.reshape(len(active), -1).norm(dim=1) / ref[active] <= tol) | (it == max_iter)
            if bool(done.any()):
                finished = active[done]
                x[finished], r[finished], iterations[finished.cpu()] = xa[done], ra[done], it
                keep = torch.nonzero(~done)[:, 0]
                active = active[keep]
                xa, ra, pa, rz = xa[keep], ra[keep], pa[keep], rz[keep]
                op, pre = op.subset(keep), pre.subset(keep)
    rel = r.reshape(b, -1).norm(dim=1) / ref
    return BatchPCGResult(x, iterations.tolist(), rel.tolist())
