"""Carrying an under-determined layer's null space down into the layer below ("virtual constraints").

When layer i's system is rank-deficient, its input is only known up to x_i = x_min + N a, with N an orthonormal
basis of the undetermined directions. The layer below still has surplus equations: its weight rows say
W_{i-1} x_{i-1} = sigma^-1(x_min + N a). Solving for (x_{i-1}, a) jointly recovers what layer i alone could not,
whenever the joint system has full column rank (it does for CNN6-d's conv1, see docs/rank_analysis.md).
Everything here runs in float64 whatever attack.dtype says.

sigma^-1 and the back-propagated error k_{i-1} depend on the LeakyReLU pattern of the unknown x_i, so the joint
linear system is solved for a fixed pattern and the pattern re-read from the solution (see
`solve_through_null_space`). It is a heuristic on a piecewise-linear system: exact when the pattern settles on the
true one, otherwise a much better starting point than the minimum-norm solution (H-GAP refines it by matching).

A settled pattern with a tiny residual is not yet a unique answer: for that pattern the joint system can still be
rank-deficient (pooled convs see their input only through the pooling's box filter; a 12x12 net with 6 filters over
an unpadded pooled conv leaves 23 of 210 directions open at the true pattern), and along those directions other
inputs give exactly the same gradient. `joint_rank` measures the rank at the solution's own pattern, so the grading
(`report.py`) calls the pair exact only when it is full rank: unique within that pattern's activation cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rgap_bench.attacks.rgap.joint_direct import DIRECT_MIN_UNKNOWNS, PROOF, DirectJoint, direct_pattern_iteration
from rgap_bench.errors import UnsupportedModelError
from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.constraints import ConvGeometry
from rgap_bench.linalg.operators import BlockJacobi, ConvSystem
from rgap_bench.linalg.pcg import pcg
from rgap_bench.linalg.pooling import pooled_filters, pooled_geometry
from rgap_bench.linalg.resources import dense_memory
from rgap_bench.linalg.spectrum import low_spectrum

CONSISTENT_RESIDUAL = 1e-3  # a settled pattern whose solution leaves more than this is a wrong pattern


@dataclass
class JointSolution:
    x_lower: Tensor  # flat input of the lower layer
    x_upper: Tensor  # flat input of the deficient layer, x_min + N a
    residual_rel: float
    iterations: int
    pattern_changes: int  # sign flips in the last iteration (0: the pattern settled)
    unknowns: int = 0  # of the joint system: the lower layer's inputs + the free coefficients
    rank: int | None = None  # of the joint system at the solution's pattern (None: not measured)
    open_lower: Tensor | None = None  # (n_lower, unknowns - rank): input directions no equation reaches
    rank_method: str = ""  # how `rank` was proven where not by the dense factorisation (`joint_direct.PROOF`)

    @property
    def consistent(self) -> bool:
        """The pattern settled and its solution fits every equation of both layers."""
        return self.pattern_changes == 0 and self.residual_rel < CONSISTENT_RESIDUAL

    @property
    def unique(self) -> bool:
        """The joint system is proven full rank at the solution's pattern."""
        return self.rank is not None and self.rank == self.unknowns


def solve_through_null_space(
    weight: Tensor,
    grad: Tensor,
    geom: ConvGeometry | None,
    act: PiecewiseLinear,
    back_k: Tensor,
    x_min: Tensor,
    null_basis: Tensor | np.ndarray,
    *,
    tol: float = 1e-11,
    max_pcg_iter: int = 3000,
    scale_rows: bool = True,
    bias: Tensor | None = None,
    pool: int = 1,
    rcond: float = 1e-10,
    **options,
) -> JointSolution:
    """Jointly solve a conv layer's input and the null-space coefficients of the deficient layer above it,
    matrix-free on the weights' device.

    Only conv layers can sit below a deficient layer: a linear layer's gradient rows alone determine its input, so
    a linear layer is never deficient, and the layers below the first linear one are convolutions. `scale_rows`
    (attack.scale_rows) scales every row to unit norm, as in the layer-by-layer solves; `bias` (the conv's, if
    any) moves to the right-hand side of the weight rows; `pool`: the conv's average pooling (the unknown x_upper is
    then the pooled layer's output, and the rows are `ConvSystem`'s pooled ones); `rcond`: the rank threshold
    of `joint_rank` (attack.rcond), measured once the pattern settled; `options` tune the pattern iteration
    (`_pattern_iteration`).
    """
    if geom is None:
        raise UnsupportedModelError(
            "the joint null-space solve needs a conv layer below the rank-deficient one; use "
            "attack.carry_null_space=false for this architecture"
        )
    joint = _ConvJoint(weight, grad, geom, act, back_k, x_min, null_basis, scale_rows, bias, pool)
    direct = DirectJoint(joint) if joint.n_lower >= DIRECT_MIN_UNKNOWNS else None  # one sparse factor, few rounds
    search = _pattern_iteration(joint, tol=tol, max_pcg_iter=max_pcg_iter, **options) if direct is None else None
    solution = search or direct_pattern_iteration(joint, direct, tol=tol)
    if not solution.consistent:
        solution = _forward_candidate(joint, solution)
    solution.unknowns = joint.n_lower + joint.null.shape[1]
    if solution.consistent:  # a pattern that did not settle is graded approximate whatever its rank
        proven = None if direct is None else direct.rank(solution.x_upper, rcond)
        if proven is not None:
            open_lower = joint.x_min.new_zeros(joint.n_lower, 0)
            solution.rank, solution.open_lower, solution.rank_method = proven, open_lower, PROOF
        else:
            solution.rank, solution.open_lower = joint_rank(joint, solution.x_upper, rcond)
    return solution


def joint_rank(joint: _ConvJoint, x_upper: Tensor, rcond: float) -> tuple[int | None, Tensor | None]:
    """Rank of the joint system under x_upper's pattern, and the lower layer's undetermined input directions.

    (x, a) is in the joint null space iff G x = 0 and W x = M a: with Q an orthonormal basis of range(M), iff
    [G; (I - Q Q^T) W] x = 0 and a = M^+ W x. So rank = rank(M) + rank of the projected n x n normal matrix
    G^T G + W^T W - (W^T Q)(W^T Q)^T, factorised densely like a deficient layer's own (`low_spectrum`, eigenvalues
    above rcond * lambda_max). (None, None) when that matrix would not fit in free memory."""
    n = joint.n_lower
    if not dense_memory(n, torch.float64, joint.device).fits():
        return None, None
    system, columns = joint.system(x_upper)
    u, sv, _ = torch.linalg.svd(columns, full_matrices=False)
    q = u[:, sv > 1e-12 * sv[0]]
    wq = torch.stack([system.weight_rows_adjoint(col.reshape(joint.out_shape)).reshape(-1) for col in q.T], dim=1)
    gram = system.dense_normal().reshape(n, n)
    gram.addmm_(wq, wq.T, alpha=-1.0)
    spectrum = low_spectrum(gram, rcond, overwrite=True)  # factorised in place: one n x n array
    return spectrum.rank + q.shape[1], spectrum.null_basis


class _ConvJoint:
    """The joint system of a conv lower layer, matrix-free: unknowns x (the lower layer's input) and a.

    For a fixed LeakyReLU pattern the weight rows read W x - N a / slope = x_min / slope. With the rows scaled,
    M = D_w diag(1/slope) N has only d columns, so a = M^+ (D_w W x - D_w z_min) is eliminated: what is left for x
    is the layer's own system with the weight rows' residual projected off range(M), solved by PCG with the
    layer's block-Jacobi preconditioner (the projection changes the operator by rank d).
    """

    def __init__(self, weight, grad, geom, act, back_k, x_min, null, scale_rows, bias=None, pool=1):
        self.device = weight.device
        as64 = {"device": self.device, "dtype": torch.float64}
        self.weight, self.grad = weight.detach().to(**as64), grad.detach().to(**as64)
        self.geom, self.act, self.scale_rows = geom, act, scale_rows
        self.pool = pool
        self.out_shape = (weight.shape[0], *pooled_geometry(geom, pool).out_hw)
        self.back_k = back_k.detach().to(**as64).reshape(-1)
        self.x_min = x_min.detach().to(**as64).reshape(-1)
        self.null = torch.as_tensor(null).detach().to(**as64)
        self.n_lower = int(np.prod(geom.in_shape))
        self.bias = None if bias is None else bias.detach().to(**as64).reshape(-1, 1, 1)

    def _layer_system(self, x_upper: Tensor, target: Tensor) -> tuple[ConvSystem, Tensor]:
        """The layer's scaled system under x_upper's LeakyReLU pattern with weight rows W x = target / slope - b,
        and the slopes."""
        slope = self.act.derivative(self.act.inverse(x_upper))
        k = (self.back_k * slope).reshape(self.out_shape)
        z = (target / slope).reshape(self.out_shape)
        if self.bias is not None:  # W x + b = sigma^-1(x_upper)
            z = z - self.bias
        return ConvSystem(self.weight, k, self.grad, z, self.geom, self.scale_rows, self.pool), slope

    def system(
        self, x_upper: Tensor, drop: Tensor | None = None, with_gradient: bool = True
    ) -> tuple[ConvSystem, Tensor]:
        """The layer's scaled system under x_upper's pattern, and M (the null-space columns of its weight rows)."""
        system, slope = self._layer_system(x_upper, self.x_min)
        if drop is not None:
            system.weight_scale = system.weight_scale * (~drop).reshape(self.out_shape)
        if not with_gradient:
            system.grad_scale = torch.zeros_like(system.grad_scale)
        return system, system.weight_scale.reshape(-1, 1) * self.null / slope[:, None]

    def solve(
        self, system: tuple[ConvSystem, Tensor], x0: Tensor | None, tol: float, max_iter: int
    ) -> tuple[Tensor, Tensor]:
        """x by PCG on the projected normal equations, then a = M^+ (weight residual); returns (x, x_upper)."""
        system, null_columns = system
        u, sv, vh = torch.linalg.svd(null_columns, full_matrices=False)
        keep = sv > 1e-12 * sv[0]
        q = u[:, keep]

        def project_off(y: Tensor) -> Tensor:
            flat = y.reshape(-1)
            return (flat - q @ (q.T @ flat)).reshape(y.shape)

        zs = system.z * system.weight_scale

        def normal(x: Tensor) -> Tensor:
            return system.grad_rows_adjoint(system.grad_rows(x)) + system.weight_rows_adjoint(
                project_off(system.weight_rows(x))
            )

        rhs = system.grad_rows_adjoint(system.grad * system.grad_scale) + system.weight_rows_adjoint(project_off(zs))
        result = pcg(normal, rhs, BlockJacobi(system), tol=tol, max_iter=max_iter, x0=x0)
        x = result.x
        weight_residual = (system.weight_rows(x) - zs).reshape(-1)
        coef = vh[keep].T @ ((u[:, keep].T @ weight_residual) / sv[keep])
        return x, self.x_min + self.null @ coef

    def forward(self, x: Tensor) -> Tensor:
        """x_upper as the lower layer computes it from x (conv, pooling, bias, activation), flat."""
        rg = pooled_geometry(self.geom, self.pool)
        filters = pooled_filters(self.weight, self.geom.stride, self.pool)
        z = F.conv2d(x.reshape(1, *self.geom.in_shape), filters, stride=rg.stride, padding=rg.padding)[0]
        if self.bias is not None:
            z = z + self.bias
        return torch.where(z < 0, self.act.slope * z, z).reshape(-1)

    def on_null_space(self, x_upper: Tensor) -> Tensor:
        """The nearest x_min + N a to x_upper: where the deficient layer's own equations hold."""
        coef = torch.linalg.lstsq(self.null, (x_upper - self.x_min)[:, None]).solution[:, 0]
        return self.x_min + self.null @ coef

    def full_residual(self, x: Tensor, x_upper: Tensor) -> float:
        """Residual of every equation under the pattern that x_upper itself implies."""
        return self._layer_system(x_upper, x_upper)[0].residual_rel(x)


def _pattern_iteration(
    joint: _ConvJoint,
    *,
    tol: float,
    max_pcg_iter: int,
    max_iter: int = 25,
    damping: float = 0.5,
    polish_iter: int = 15,
    settled_tol: float = 1e-6,
    loose_tol: float = 1e-7,
) -> JointSolution:
    """Phase 1, a damped fixed point on the activation pattern with all equations, brings the pattern close; a
    pattern that settles and fits every equation is the answer. Otherwise phase 2 drops the weight rows of units
    whose sign kept flipping (their LeakyReLU branch is uncertain), solves with the remaining weight rows alone (no
    dependence on the pattern through k) and drops every unit that still flips, until the pattern is
    self-consistent. The candidate with the smallest residual over all equations is returned."""
    x_upper = joint.x_min.clone()
    x = None
    best: JointSolution | None = None
    history: list[Tensor] = []
    iterations = 0
    loose = max(tol, loose_tol)  # while the pattern still moves, a loose solve is enough
    for _ in range(max_iter):
        iterations += 1
        system = joint.system(x_upper)
        x, candidate = joint.solve(system, x, loose, max_pcg_iter)
        flips = (candidate < 0) != (x_upper < 0)
        history.append(flips)
        n_flips = int(flips.sum())
        if n_flips == 0 and loose > tol:
            x, candidate = joint.solve(system, x, tol, max_pcg_iter)  # settled: solve this pattern exactly
        residual = joint.full_residual(x, candidate)
        if best is None or residual < best.residual_rel:
            best = JointSolution(x.reshape(-1), candidate, residual, iterations, n_flips)
        if n_flips == 0:
            if residual < settled_tol:
                return best
            break  # a self-consistent pattern that does not fit every equation: a wrong one, polish below
        x_upper = x_upper + damping * (candidate - x_upper)
    drop = torch.stack(history[-6:]).any(0)
    d = joint.null.shape[1]
    for _ in range(polish_iter):
        if int((~drop).sum()) - d < joint.n_lower:
            break  # too few weight rows left to determine x and a without the gradient rows
        iterations += 1
        system = joint.system(x_upper, drop, with_gradient=False)
        x, candidate = joint.solve(system, x, loose, max_pcg_iter)
        flips = (candidate < 0) != (x_upper < 0)
        x_upper = candidate
        if not bool(flips.any()):
            x, candidate = joint.solve(system, x, tol, max_pcg_iter)
            residual = joint.full_residual(x, candidate)
            if residual < best.residual_rel:
                best = JointSolution(x.reshape(-1), candidate, residual, iterations, 0)
            break
        drop |= flips
    best.iterations = iterations
    return best


def _forward_candidate(joint: _ConvJoint, best: JointSolution) -> JointSolution:
    """The pattern search can find the right lower input with a wrong x_upper: a few units on the wrong branch,
    absorbed by the free coefficients, and no pattern settles. The lower layer's own forward pass of that input,
    put on x_min + range(N), is then the consistent x_upper: it replaces the search's when it fits every equation
    better. Only for an unsettled search, so that settled answers stay as they were; the input is kept either way."""
    forward = joint.forward(best.x_lower)
    x_upper = joint.on_null_space(forward)
    residual = joint.full_residual(best.x_lower.reshape(joint.geom.in_shape), x_upper)
    if not residual < best.residual_rel:
        return best
    flips = int(((x_upper < 0) != (forward < 0)).sum())  # the pattern the projection moved off the forward pass
    return JointSolution(best.x_lower, x_upper, residual, best.iterations, flips)
