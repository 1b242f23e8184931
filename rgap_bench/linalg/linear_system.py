"""A linear layer's scaled least-squares system, solved in closed form (its normal matrix is a*I + W^T W)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from rgap_bench.linalg.operators import _inverse_norm
from rgap_bench.linalg.pcg import pcg
from rgap_bench.linalg.regularize import Choice, choose_spectral, rule_for


@dataclass
class LinearSystem:
    """Scaled system [D_g (k (x) I); D_w W] x = [D_g vec(dL/dW); D_w z] of one bias-free linear layer.

    Its normal matrix is a*I + W~^T W~ (a = number of active gradient rows when rows are scaled): solved directly
    (Woodbury on the out x out side when the layer narrows), or by CG when both sides are large.
    """

    weight: Tensor  # (out, n)
    k: Tensor  # (out,)
    grad: Tensor  # (out, n)
    z: Tensor | None  # (out,)
    scale_rows: bool = True
    tol: float = 1e-12
    direct_max: int = 512  # above this (on both sides) CG replaces the direct solve
    regularize: str = "none"  # a rule of `regularize.RULES`: Tikhonov with lam from the data (docs/noise.md)
    noise_sigma: float | None = None  # std of the gradient's noise, when public (the discrepancy principle)
    choice: Choice | None = field(default=None, init=False)  # the regularisation chosen by the last solve

    def solve(self) -> tuple[Tensor, float]:
        k = self.k.reshape(-1)
        active = k != 0
        if self.scale_rows:
            alpha = active.sum().to(k.dtype)
            rhs = (self.grad[active] / k[active, None]).sum(0)
        else:
            alpha = (k**2).sum()
            rhs = k @ self.grad
        n = self.weight.shape[1]
        if self.z is None:
            x = rhs / alpha
            return x, self.residual_rel(x, None, None)
        wt, wscale = self.scaled_weight_rows()
        rhs = rhs + wt.T @ (self.z * wscale)
        out = wt.shape[0]
        rule = rule_for(self.regularize, self.noise_sigma)
        if rule != "none":
            x = self._tikhonov(rule, alpha, rhs, wt, wscale)
            return x, self.residual_rel(x, wt, wscale)
        if min(out, n) > self.direct_max:
            # alpha*I dominates a row-normalised W^T W, so plain CG converges in a few matrix-vector products.
            result = pcg(lambda v: alpha * v + wt.T @ (wt @ v), rhs, lambda v: v / alpha, tol=self.tol, max_iter=500)
            x = result.x
        elif out < n:
            cap = alpha * torch.eye(out, dtype=wt.dtype, device=wt.device) + wt @ wt.T
            x = (rhs - wt.T @ torch.linalg.solve(cap, wt @ rhs)) / alpha
        else:
            gram = alpha * torch.eye(n, dtype=wt.dtype, device=wt.device) + wt.T @ wt
            x = torch.cholesky_solve(rhs[:, None], torch.linalg.cholesky(gram))[:, 0]
        return x, self.residual_rel(x, wt, wscale)

    def _tikhonov(self, rule: str, alpha: Tensor, rhs: Tensor, wt: Tensor, wscale: Tensor) -> Tensor:
        """The regularised solve from one eigendecomposition of the normal matrix alpha I + W~^T W~ (on its smaller
        side: the eigenvalues of W~ W~^T shifted by alpha, plus alpha on the rest)."""
        k = self.k.reshape(-1)
        active = k != 0
        if self.scale_rows:
            gb = (self.grad[active] / k[active, None]).pow(2).sum()
            noise_per_row = 1.0 / k[active] ** 2
        else:
            gb = self.grad[active].pow(2).sum()
            noise_per_row = torch.ones_like(k[active])
        bb = float(gb + (self.z * wscale).pow(2).sum())
        n = wt.shape[1]
        rows = int(active.sum()) * n + wt.shape[0]
        noise2 = None
        if self.noise_sigma is not None:  # E||noise||^2 of the scaled gradient rows, less the n dof the fit absorbs
            noise2 = self.noise_sigma**2 * n * float(noise_per_row.sum()) * (rows - n) / rows
        gram = wt.T @ wt if n <= wt.shape[0] else None
        if gram is not None:
            e, v = torch.linalg.eigh(gram)
        else:  # W~^T W~ = V S^2 V^T with V = W~^T U / S; the complement of V has eigenvalue 0
            s2, u = torch.linalg.eigh(wt @ wt.T)
            keep = s2 > s2.max() * 1e-14
            v = wt.T @ u[:, keep] / s2[keep].sqrt()
            e = s2[keep]
        c = v.T @ rhs
        rest = rhs - v @ c  # along eigenvalue alpha of the normal matrix (outside W~'s row space)
        e_all = torch.cat([e + alpha, alpha.reshape(1)])
        c_all = torch.cat([c, rest.norm().reshape(1)])
        mult = torch.ones_like(e_all)
        mult[-1] = n - e.numel()
        self.choice = choose_spectral(e_all, c_all, bb, rows, rule, noise2, mult)
        lam = self.choice.lam
        return v @ (c / (e + alpha + lam)) + rest / (alpha + lam)

    def scaled_weight_rows(self) -> tuple[Tensor | None, Tensor | None]:
        """(W~, the row scales): the weight rows as `solve` scales them; (None, None) without z."""
        if self.z is None:
            return None, None
        wscale = _inverse_norm((self.weight**2).sum(1)) if self.scale_rows else torch.ones_like(self.z)
        return self.weight * wscale[:, None], wscale

    def residual_rel(self, x: Tensor, wt: Tensor | None, wscale: Tensor | None) -> float:
        """Relative residual of the scaled system; `wt`, `wscale`: the scaled weight rows (None without z)."""
        k = self.k.reshape(-1)
        active = k != 0
        scale = 1.0 / k[active].abs() if self.scale_rows else torch.ones_like(k[active])
        grad_res = (torch.outer(k[active], x) - self.grad[active]) * scale[:, None]
        grad_ref = self.grad[active] * scale[:, None]
        res, ref = float((grad_res**2).sum()), float((grad_ref**2).sum())
        if self.z is not None:
            res += float(((wt @ x - self.z * wscale) ** 2).sum())
            ref += float(((self.z * wscale) ** 2).sum())
        return (res / ref) ** 0.5 if ref > 0 else res**0.5
