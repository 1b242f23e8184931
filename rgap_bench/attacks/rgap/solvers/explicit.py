"""The reference paths: the layer's constraints as explicit sparse matrices, assembled on the host in float64.

attack.solver=dense on a linear layer and attack.solver=sparse factorise the sparse normal matrix
(`rgap_bench.linalg.lstsq.solve_blocks`); attack.solver=lstsq hands the stacked rows to LAPACK as one dense matrix,
what naive code does. Slow, and kept to check the fast paths against. A pooled conv stacks the conv's gradient rows
(with the full-resolution error P^T k) and the weight rows of the equivalent strided conv
(`rgap_bench.linalg.pooling`).
"""

from __future__ import annotations

import torch

from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.plan import LayerPlan
from rgap_bench.attacks.rgap.solvers.base import LayerProblem, LayerSolve
from rgap_bench.linalg.constraints import ConstraintBlock, conv_constraints, linear_constraints
from rgap_bench.linalg.lstsq import dense_lstsq, solve_blocks
from rgap_bench.linalg.pooling import pooled_filters, pooled_geometry, upsample_error


def _blocks(problem: LayerProblem) -> list[ConstraintBlock]:
    cpu = {"device": "cpu", "dtype": torch.float64}
    w64, g64, k64, z64 = (t.detach().to(**cpu) for t in (problem.weight, problem.layer.grad, problem.k, problem.z))
    layer = problem.layer
    geom = layer.geometry
    if geom is None:
        blocks = linear_constraints(w64, g64, k64, z64)
    elif layer.pool == 1:
        blocks = conv_constraints(w64, g64, k64.reshape(w64.shape[0], -1), z64, geom)
    else:  # pooled: the conv's gradient rows with the full-resolution error, the weight rows of the equivalent conv
        k_full = upsample_error(k64.reshape(layer.out_shape), geom.out_hw, layer.pool)
        gradient = conv_constraints(w64, g64, k_full.reshape(w64.shape[0], -1), None, geom)
        row_geom = pooled_geometry(geom, layer.pool)
        row_weight = pooled_filters(w64, geom.stride, layer.pool)
        weight = conv_constraints(row_weight, row_weight, k64.reshape(w64.shape[0], -1), z64, row_geom)[1]
        blocks = [*gradient, weight]
    if problem.alive is None:
        return blocks
    keep = problem.alive.detach().reshape(-1).cpu().numpy()  # one weight row per (pooled) output, in z's order
    return [ConstraintBlock(b.kind, b.matrix[keep], b.rhs[keep]) if b.kind == "weight" else b for b in blocks]


def _solve_factorised(problem: LayerProblem, plan: LayerPlan, options: RGAPOptions, kind: str) -> LayerSolve:
    weight = problem.weight
    result = solve_blocks(
        _blocks(problem),
        dtype=weight.dtype,
        solver=kind,
        scale_rows=options.scale_rows,
        want_rank=plan.want_rank,
        rcond=options.rcond,
        refine_steps=options.refine_steps,
        device=weight.device,
        null_hint=plan.null_hint,
    )
    x = torch.from_numpy(result.x).to(weight.device, weight.dtype).reshape(problem.layer.in_shape)
    return LayerSolve(
        x,
        result.residual_rel,
        result.solver,
        rank=result.rank,
        sigma_min_rel=result.sigma_min_rel,
        null_basis=result.null_basis,
    )


def solve_explicit_dense(problem: LayerProblem, plan: LayerPlan, options: RGAPOptions) -> LayerSolve:
    return _solve_factorised(problem, plan, options, "dense")


def solve_explicit_sparse(problem: LayerProblem, plan: LayerPlan, options: RGAPOptions) -> LayerSolve:
    return _solve_factorised(problem, plan, options, "sparse")


def solve_lstsq(problem: LayerProblem, plan: LayerPlan, options: RGAPOptions) -> LayerSolve:
    weight = problem.weight
    x, residual = dense_lstsq(_blocks(problem), dtype=weight.dtype, scale_rows=options.scale_rows)
    x = torch.from_numpy(x).to(weight.device, weight.dtype).reshape(problem.layer.in_shape)
    return LayerSolve(x, residual, "dense-lstsq")
