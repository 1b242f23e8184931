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
