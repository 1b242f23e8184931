"""Carrying an under-determined layer's null space down into the layer below ("virtual constraints").

When layer i's system is rank-deficient, its input is only known up to x_i = x_min + N a, with N an orthonormal
basis of the undetermined directions. The layer below still has surplus equations: its weight rows say
W_{i-1} x_{i-1} = sigma^-1(x_min + N a). Solving for (x_{i-1}, a) jointly recovers what layer i alone could not,
whenever the joint system has full column rank (it does for CNN6-d's conv1, see docs/rank_analysis.md).

sigma^-1 and the back-propagated error k_{i-1} depend on the LeakyReLU pattern of the unknown x_i, so the joint
linear system is solved for a fixed pattern, the pattern re-read from the new x_i, and the step damped; the iterate
with the smallest residual is kept. This is a fixed-point heuristic: exact when the pattern settles on the true one,
otherwise a much better starting point than the minimum-norm solution (H-GAP refines it by gradient matching).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.constraints import ConstraintBlock, ConvGeometry, conv_constraints, linear_constraints
from rgap_bench.linalg.lstsq import stack_scaled


@dataclass
class JointSolution:
    x_lower: Tensor  # flat input of the lower layer
    x_upper: Tensor  # flat input of the deficient layer, x_min + N a
    residual_rel: float
    iterations: int
    pattern_changes: int  # sign flips in the last iteration (0: the pattern settled)


def _augment(blocks: list[ConstraintBlock], extra: np.ndarray) -> list[ConstraintBlock]:
    """Append the null-space coefficients as extra unknowns: zero in gradient rows, -D N in weight rows."""
    out = []
    for block in blocks:
        cols = extra if block.kind == "weight" else sp.csr_matrix((block.matrix.shape[0], extra.shape[1]))
        out.append(ConstraintBlock(block.kind, sp.hstack([block.matrix, cols], format="csr"), block.rhs))
    return out


def solve_through_null_space(
    weight: Tensor,
    grad: Tensor,
    geom: ConvGeometry | None,
    act: PiecewiseLinear,
    back_k: Tensor,
    x_min: Tensor,
    null_basis: np.ndarray,
    *,
    max_iter: int = 25,
    damping: float = 0.5,
    scale_rows: bool = True,
) -> JointSolution:
    """Jointly solve the lower layer's input and the upper layer's null-space coefficients (host, float64)."""
    weight, grad = weight.detach().double().cpu(), grad.detach().double().cpu()
    back_k = back_k.detach().double().cpu().reshape(-1)
    x_min = x_min.detach().double().cpu().reshape(-1)
    null = torch.from_numpy(null_basis)
    out_shape = (weight.shape[0], *geom.out_hw) if geom is not None else (weight.shape[0],)
    n_lower = int(np.prod(geom.in_shape)) if geom is not None else weight.shape[1]
    x_upper = x_min.clone()
    best: JointSolution | None = None
    for iteration in range(1, max_iter + 1):
        slope = act.derivative(act.inverse(x_upper))  # LeakyReLU slope per unit under the current pattern
        k_lower = back_k * slope
        z_min = x_min / slope
        if geom is not None:
            blocks = conv_constraints(
                weight, grad, k_lower.reshape(weight.shape[0], -1), z_min.reshape(out_shape), geom
            )
        else:
            blocks = linear_constraints(weight, grad, k_lower, z_min)
        matrix, rhs = stack_scaled(_augment(blocks, -(null / slope[:, None]).numpy()), scale_rows)
        gram = torch.from_numpy((matrix.T @ matrix).toarray())
        chol, info = torch.linalg.cholesky_ex(gram)
        rhs_n = torch.from_numpy(matrix.T @ rhs)[:, None]
        sol = (
            torch.cholesky_solve(rhs_n, chol)[:, 0]
            if int(info) == 0
            else torch.linalg.lstsq(gram, rhs_n).solution[:, 0]
        )
        residual = float(np.linalg.norm(matrix @ sol.numpy() - rhs) / max(np.linalg.norm(rhs), 1e-300))
        candidate_upper = x_min + null @ sol[n_lower:]
        changes = int(((candidate_upper < 0) != (x_upper < 0)).sum())
        if best is None or residual < best.residual_rel:
            best = JointSolution(sol[:n_lower], candidate_upper, residual, iteration, changes)
        if changes == 0:
            break
        x_upper = x_upper + damping * (candidate_upper - x_upper)
    best.iterations = iteration
    return best
