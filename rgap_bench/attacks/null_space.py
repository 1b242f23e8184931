"""Carrying an under-determined layer's null space down into the layer below ("virtual constraints").

When layer i's system is rank-deficient, its input is only known up to x_i = x_min + N a, with N an orthonormal
basis of the undetermined directions. The layer below still has surplus equations: its weight rows say
W_{i-1} x_{i-1} = sigma^-1(x_min + N a). Solving for (x_{i-1}, a) jointly recovers what layer i alone could not,
whenever the joint system has full column rank (it does for CNN6-d's conv1, see docs/rank_analysis.md).

sigma^-1 and the back-propagated error k_{i-1} depend on the LeakyReLU pattern of the unknown x_i, so the joint
linear system is solved for a fixed pattern and the pattern re-read from the solution (see
`solve_through_null_space`). It is a heuristic on a piecewise-linear system: exact when the pattern settles on the
true one, otherwise a much better starting point than the minimum-norm solution (H-GAP refines it by matching).
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
from rgap_bench.linalg.spectrum import cholesky_solve


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


class _JointSystem:
    """The joint least-squares system for a fixed LeakyReLU pattern of the deficient layer's input."""

    def __init__(self, weight, grad, geom, act, back_k, x_min, null, scale_rows):
        self.weight, self.grad, self.geom, self.act = weight, grad, geom, act
        self.back_k, self.x_min, self.null, self.scale_rows = back_k, x_min, null, scale_rows
        self.out_shape = (weight.shape[0], *geom.out_hw) if geom is not None else (weight.shape[0],)
        self.n_lower = int(np.prod(geom.in_shape)) if geom is not None else weight.shape[1]

    def blocks(self, x_upper: Tensor, drop: Tensor | None, with_gradient: bool) -> list[ConstraintBlock]:
        slope = self.act.derivative(self.act.inverse(x_upper))  # LeakyReLU slope per unit under this pattern
        k_lower = self.back_k * slope
        z_min = self.x_min / slope
        if self.geom is not None:
            shape = (self.weight.shape[0], -1)
            blocks = conv_constraints(
                self.weight, self.grad, k_lower.reshape(shape), z_min.reshape(self.out_shape), self.geom
            )
        else:
            blocks = linear_constraints(self.weight, self.grad, k_lower, z_min)
        blocks = _augment(blocks, -(self.null / slope[:, None]).numpy())
        if drop is not None:
            keep = (~drop).numpy()
            blocks = [ConstraintBlock(b.kind, b.matrix[keep], b.rhs[keep]) if b.kind == "weight" else b for b in blocks]
        return [b for b in blocks if with_gradient or b.kind == "weight"]

    def solve(self, blocks: list[ConstraintBlock]) -> tuple[Tensor, float, bool]:
        matrix, rhs = stack_scaled(blocks, self.scale_rows)
        gram = torch.from_numpy((matrix.T @ matrix).toarray())
        chol, info = torch.linalg.cholesky_ex(gram)
        full_rank = int(info) == 0
        rhs_n = torch.from_numpy(matrix.T @ rhs)[:, None]
        sol = cholesky_solve(rhs_n, chol)[:, 0] if full_rank else torch.linalg.lstsq(gram, rhs_n).solution[:, 0]
        residual = float(np.linalg.norm(matrix @ sol.numpy() - rhs) / max(np.linalg.norm(rhs), 1e-300))
        return sol, residual, full_rank

    def upper(self, sol: Tensor) -> Tensor:
        return self.x_min + self.null @ sol[self.n_lower :]

    def full_residual(self, sol: Tensor) -> float:
        """Residual of every equation (gradient and weight rows) under the pattern the solution itself implies."""
        matrix, rhs = stack_scaled(self.blocks(self.upper(sol), None, True), self.scale_rows)
        return float(np.linalg.norm(matrix @ sol.numpy() - rhs) / max(np.linalg.norm(rhs), 1e-300))


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
    polish_iter: int = 15,
    scale_rows: bool = True,
) -> JointSolution:
    """Jointly solve the lower layer's input and the upper layer's null-space coefficients (host, float64).

    Phase 1, a damped fixed point on the activation pattern with all equations, brings the pattern close. Phase 2
    drops the weight rows of units whose sign kept flipping (their LeakyReLU branch is uncertain), solves with the
    remaining weight rows alone (no dependence on the pattern through k), and drops every unit that still flips,
    until the pattern is self-consistent. The solution with the smaller residual over all equations is returned.
    """
    weight, grad = weight.detach().double().cpu(), grad.detach().double().cpu()
    back_k = back_k.detach().double().cpu().reshape(-1)
    x_min = x_min.detach().double().cpu().reshape(-1)
    system = _JointSystem(weight, grad, geom, act, back_k, x_min, torch.from_numpy(null_basis), scale_rows)
    x_upper = x_min.clone()
    best: JointSolution | None = None
    history: list[Tensor] = []
    iterations = 0
    for _ in range(max_iter):
        iterations += 1
        sol, residual, _ = system.solve(system.blocks(x_upper, None, True))
        candidate = system.upper(sol)
        flips = (candidate < 0) != (x_upper < 0)
        history.append(flips)
        if best is None or residual < best.residual_rel:
            best = JointSolution(sol[: system.n_lower], candidate, residual, iterations, int(flips.sum()))
        if not bool(flips.any()):
            return best
        x_upper = x_upper + damping * (candidate - x_upper)
    drop = torch.stack(history[-6:]).any(0)
    for _ in range(polish_iter):
        iterations += 1
        sol, _, full_rank = system.solve(system.blocks(x_upper, drop, False))
        if not full_rank:
            break
        candidate = system.upper(sol)
        flips = (candidate < 0) != (x_upper < 0)
        x_upper = candidate
        if not bool(flips.any()):
            residual = system.full_residual(sol)
            if residual < best.residual_rel:
                best = JointSolution(sol[: system.n_lower], candidate, residual, iterations, 0)
            break
        drop |= flips
    best.iterations = iterations
    return best
