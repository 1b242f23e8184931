"""Tikhonov regularisation of one layer's least squares, min ||A x - b||^2 + lam ||x||^2, with lam from the data.

Two rules (docs/noise.md):
- generalised cross-validation (noise level unknown): lam minimises ||r_lam||^2 / (m - tr H_lam)^2, H_lam the
  influence matrix A (A^T A + lam I)^-1 A^T;
- the discrepancy principle (noise std public, e.g. announced by the defence): the largest lam whose residual stays
  within the noise the rows are known to carry, ||r_lam||^2 <= delta^2; lam = 0 when even the plain solution's
  residual exceeds it (the noise the attacker does not know of, such as the error of z, dominates).
On an exact system both rules pick lam = 0 up to rounding: the residual is ~0, so GCV is minimised at no damping and
the discrepancy bound (0 noise) admits none.

With the eigendecomposition A^T A = V diag(e) V^T and c = V^T A^T b (a linear layer: a small dense normal matrix)
every quantity is a sum over the spectrum, so the whole grid costs one eigh; a conv layer (matrix-free, PCG) scans a
few lam and estimates tr H_lam by Hutchinson probes instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

RULES = ("none", "gcv", "discrepancy", "auto")
GRID = torch.logspace(-14, 0, 57, dtype=torch.float64)  # lam / lambda_max: 0.25 decades apart


@dataclass(frozen=True)
class Choice:
    """The chosen Tikhonov parameter (absolute, on the scaled normal matrix) and how it was chosen."""

    lam: float
    rule: str  # gcv | discrepancy | none
    lam_rel: float  # lam / lambda_max of the normal matrix
    residual2: float  # ||A x_lam - b||^2 at the choice


def rule_for(option: str, noise_sigma: float | None) -> str:
    """attack.regularize -> the rule used: auto is the discrepancy principle when the noise std is known, else GCV."""
    if option == "auto":
        return "discrepancy" if noise_sigma is not None else "gcv"
    if option == "discrepancy" and noise_sigma is None:
        return "gcv"  # no noise level to be discrepant with: the data decide
    return option


def spectral_residual2(e: Tensor, c: Tensor, bb: float, lam: Tensor) -> Tensor:
    """||A x_lam - b||^2 for each lam, from the spectrum: bb - sum c^2 (2 / (e + lam) - e / (e + lam)^2)."""
    d = e[None, :] + lam[:, None]
    safe = torch.where(d > 0, d, torch.ones_like(d))
    terms = torch.where(d > 0, c[None, :] ** 2 * (2 / safe - e[None, :] / safe**2), torch.zeros_like(d))
    return (bb - terms.sum(1)).clamp_min(0)


def choose_spectral(
    e: Tensor, c: Tensor, bb: float, rows: int, rule: str, noise2: float | None, mult: Tensor | None = None
) -> Choice:
    """lam for a system given by its normal matrix's eigenvalues `e`, the projections `c` = V^T A^T b (the norm of
    the projection onto an eigenspace, whose dimension `mult` gives, default 1), ||b||^2 and the number of rows;
    `noise2`: the expected ||noise||^2 of the rows (discrepancy)."""
    e = e.double().clamp_min(0)
    c = c.double()
    mult = torch.ones_like(e) if mult is None else mult.double()
    top = float(e.max()) if e.numel() else 0.0
    if rule == "none" or top == 0:
        return Choice(0.0, "none", 0.0, float(spectral_residual2(e, c, bb, torch.zeros(1, dtype=e.dtype))[0]))
    lams = torch.cat([torch.zeros(1, dtype=e.dtype), GRID.to(e.device) * top])
    res2 = spectral_residual2(e, c, bb, lams)
    if rule == "gcv":
        dof = rows - (mult[None, :] * e[None, :] / (e[None, :] + lams[:, None]).clamp_min(1e-300)).sum(1)
        score = res2 / dof.clamp_min(1e-12) ** 2
        i = int(torch.argmin(score))
    elif rule == "discrepancy":  # the rise over the plain residual, summed without cancellation
        rise = (c[None, :] ** 2 * lams[:, None] ** 2 / (e[None, :] * (e[None, :] + lams[:, None]) ** 2)).nan_to_num()
        i = last_within(res2[0] + rise.sum(1), noise2 or 0.0)
    else:
        raise ValueError(f"unknown regularisation rule {rule!r}")
    return Choice(float(lams[i]), rule, float(lams[i]) / top, float(res2[i]))


def last_within(res2: Tensor, noise2: float) -> int:
    """The largest index (lams ascending) whose residual^2 stays within noise2 (0 when none does)."""
    ok = torch.nonzero(res2 <= noise2).flatten()
    return int(ok.max()) if ok.numel() else 0


def hutchinson_trace(apply_inverse: Callable[[Tensor], Tensor], like: Tensor, probes: int, seed: int = 0) -> float:
    """tr(M^-1) estimated with Rademacher probes v: mean of v^T M^-1 v (seeded: a run is reproducible)."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(probes):
        v = (torch.randint(0, 2, like.shape, generator=gen, dtype=torch.int64) * 2 - 1).to(like.device, like.dtype)
        total += float((v * apply_inverse(v)).sum())
    return total / probes


def tikhonov_note(choice: Choice | None) -> str:
    """The layer report's note on the regularisation ('' when none was asked for)."""
    if choice is None or choice.rule == "none":
        return ""
    return f"tikhonov ({choice.rule}): lam = {choice.lam_rel:.1e} x lambda_max"
