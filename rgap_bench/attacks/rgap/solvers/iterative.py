"""A conv layer by preconditioned conjugate gradients on its matrix-free normal equations (no rank, any size)."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.plan import LayerPlan
from rgap_bench.attacks.rgap.solvers.base import LayerProblem, LayerSolve
from rgap_bench.linalg.batched_system import StackedBlockJacobi, StackedSystems
from rgap_bench.linalg.operators import BlockJacobi
from rgap_bench.linalg.pcg import pcg, pcg_many
from rgap_bench.linalg.resources import cpu_threads, dense_bytes, solve_threads

log = logging.getLogger(__name__)

# PCG counts as converged while its normal residual is within this factor of attack.tol: float rounding keeps the
# last digits from being reached on well-posed layers, a stall far above it means an ill-posed (deficient) layer.
CONVERGED_FACTOR = 1e3


def _preconditioner(problem: LayerProblem, plan: LayerPlan) -> BlockJacobi:
    # float32 preconditioning only where the solution is unique (proven full rank): on a deficient layer the
    # preconditioner picks which of the solutions PCG returns, and that must not change
    compact = plan.certificate is not None or plan.known_rank == problem.layer.unknowns
    return BlockJacobi(problem.system, compact=compact)


def solve_pcg(problem: LayerProblem, plan: LayerPlan, options: RGAPOptions) -> LayerSolve:
    layer, system, weight = problem.layer, problem.system, problem.weight
    with cpu_threads(solve_threads(weight.device, layer.unknowns * weight[0].numel())):
        result = pcg(
            system.normal,
            system.normal_rhs(),
            _preconditioner(problem, plan),
            tol=options.tol,
            max_iter=options.max_iter,
            x0=system.weight_row_start(),
        )
    return _layer_solve(problem, result.x, result.iterations, result.normal_residual_rel, options)


def solve_pcg_many(problems: list[LayerProblem], plans: list[LayerPlan], options: RGAPOptions) -> list[LayerSolve]:
    """`solve_pcg` for several samples' systems of one layer (same weights, every one with weight rows) as batched
    PCGs (`pcg.pcg_many`), one per kind of preconditioner (mode and dtype), each sample checked and stopped as
    `solve_pcg` would; the same solutions up to rounding."""
    weight = problems[0].weight
    work = len(problems) * problems[0].layer.unknowns * weight[0].numel()
    with cpu_threads(solve_threads(weight.device, work)):
        pres = [_preconditioner(p, plan) for p, plan in zip(problems, plans, strict=True)]
        groups: dict[tuple, list[int]] = {}
        for i, pre in enumerate(pres):
            groups.setdefault((pre.mode, pre.dtype), []).append(i)
        solves: dict[int, LayerSolve] = {}
        for members in groups.values():
            systems = [problems[i].system for i in members]
            starts = [s.weight_row_start() for s in systems]
            x0 = torch.stack([torch.zeros(s.shape, dtype=weight.dtype, device=weight.device) if x is None else x
                              for s, x in zip(systems, starts, strict=True)])  # fmt: skip
            rhs = torch.stack([s.normal_rhs() for s in systems])
            pre = StackedBlockJacobi([pres[i] for i in members])
            result = pcg_many(StackedSystems(systems), rhs, pre, tol=options.tol, max_iter=options.max_iter, x0=x0)
            for j, i in enumerate(members):
                solves[i] = _layer_solve(problems[i], result.x[j], result.iterations[j],
                                         result.normal_residual_rel[j], options)  # fmt: skip
    return [solves[i] for i in range(len(problems))]


def _layer_solve(problem: LayerProblem, x: Tensor, iterations: int, normal_residual_rel: float,
                 options: RGAPOptions) -> LayerSolve:  # fmt: skip
    """The solve's record; warns when PCG stopped short of attack.tol."""
    layer, system, weight = problem.layer, problem.system, problem.weight
    n = layer.unknowns
    converged = normal_residual_rel <= CONVERGED_FACTOR * options.tol
    if not converged:
        log.warning(
            "layer %d: PCG stopped at relative normal residual %.1e after %d iterations (attack.max_iter); "
            "the layer may be rank-deficient (check with python -m rgap_bench.rank). To measure its rank and "
            "solve its null space jointly with the layer below, use attack.rank=auto with "
            "attack.rank_max_unknowns >= %d (the dense path holds %d x %d matrices: %.1f GB)",
            layer.index, normal_residual_rel, iterations, n, n, n, dense_bytes(n, weight.dtype, weight.device) / 1e9,
        )  # fmt: skip
    return LayerSolve(
        x.reshape(layer.in_shape),
        system.residual_rel(x),
        "pcg-blockjacobi",
        iterations=iterations,
        normal_residual_rel=normal_residual_rel,
        converged=converged,
    )
