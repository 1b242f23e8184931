"""A conv layer by factorising its dense normal matrix: the path that measures the rank and the null space.

The matrix is built by index arithmetic on the weights' device (`ConvSystem.dense_normal`) and factorised by
`rgap_bench.linalg.spectrum.factor_normal`; the solution is then refined against the matrix-free operator, so the
rounding of the normal matrix washes out.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.plan import LayerPlan
from rgap_bench.attacks.rgap.solvers.base import LayerProblem, LayerSolve
from rgap_bench.linalg.operators import ConvSystem
from rgap_bench.linalg.spectrum import factor_normal, largest_eigenvalue


def operator_top(system: ConvSystem) -> float:
    """lambda_max of the layer's normal matrix by block power iteration on the matrix-free operator: each step is
    a few convolutions instead of a full read of the dense matrix (1.4 GB at 13068 unknowns)."""
    shape = system.shape

    def apply(v: Tensor) -> Tensor:
        return torch.stack([system.normal(col.reshape(shape)).reshape(-1) for col in v.T], dim=1)

    return largest_eigenvalue(apply, math.prod(shape), like=system.weight)


def solve_dense(problem: LayerProblem, plan: LayerPlan, options: RGAPOptions) -> LayerSolve:
    layer, system = problem.layer, problem.system
    shape = system.shape
    # no refinement against the dense matrix itself: the steps below refine against the operator, and each
    # product with an n x n matrix is a full read of it (1.4 GB at n = 13068)
    top = operator_top(system) if plan.want_rank else None
    # factorised in place: the normal matrix itself is not needed again (one n x n array at the peak)
    factor = factor_normal(
        system.dense_normal(), options.rcond, plan.want_rank, plan.null_hint, refine_steps=0, top=top, overwrite=True
    )
    rhs = system.normal_rhs()
    x = factor.solve(rhs.reshape(-1)).reshape(shape)
    for _ in range(options.refine_steps):
        x = x + factor.solve((rhs - system.normal(x)).reshape(-1)).reshape(shape)
    return LayerSolve(
        x.reshape(layer.in_shape),
        system.residual_rel(x),
        factor.label,
        rank=factor.rank,
        sigma_min_rel=factor.sigma_min_rel,
        null_basis=factor.null_basis,
        rank_method="dense" if factor.rank is not None else "",
    )
