"""A conv layer by preconditioned conjugate gradients on its matrix-free normal equations (no rank, any size)."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.plan import LayerPlan
from rgap_bench.attacks.rgap.solvers.base import LayerProblem, LayerSolve
from rgap_bench.linalg.batched_system import StackedBlockJacobi, StackedSystems
from rgap_bench.linalg.circulant import CirculantPreconditioner, circulant_applies
from rgap_bench.linalg.operators import BlockJacobi, ConvSystem
from rgap_bench.linalg.pcg import pcg, pcg_many
from rgap_bench.linalg.resources import batch_bytes, cpu_threads, dense_bytes, solve_threads

log = logging.getLogger(__name__)

# PCG counts as converged while its normal residual is within this factor of attack.tol: float rounding keeps the
# last digits from being reached on well-posed layers, a stall far above it means an ill-posed (deficient) layer.
CONVERGED_FACTOR = 1e3


def _preconditioner(problem: LayerProblem, plan: LayerPlan) -> BlockJacobi:
    # below `circulant.MIN_UNKNOWNS` unknowns (larger convs take the circulant: 1060 -> 270 PCG iterations on the
    # wide net's conv1 at 128x128); float32 preconditioning only where the solution is unique (proven full rank):
    # on a deficient layer the preconditioner picks which of the solutions PCG returns, and that must not change
    compact = plan.certificate is not None or plan.known_rank == problem.layer.unknowns
    return BlockJacobi(problem.system, compact=compact)


def solve_pcg(problem: LayerProblem, plan: LayerPlan, options: RGAPOptions) -> LayerSolve:
    layer, system, weight = problem.layer, problem.system, problem.weight
    with cpu_threads(solve_threads(weight.device, layer.unknowns * weight[0].numel())):
        circulant = circulant_applies(system)
        result = pcg(
            system.normal,
            system.normal_rhs(),
            CirculantPreconditioner(system) if circulant else _preconditioner(problem, plan),
            tol=options.tol,
            max_iter=options.max_iter,
            x0=system.weight_row_start(),
        )
    label = "pcg-circulant" if circulant else "pcg-blockjacobi"
    return _layer_solve(problem, result.x, result.iterations, result.normal_residual_rel, options, label)


def solve_pcg_many(problems: list[LayerProblem], plans: list[LayerPlan], options: RGAPOptions) -> list[LayerSolve]:
    """`solve_pcg` for several samples' systems of one layer (same weights, every one with weight rows) as batched
    PCGs (`pcg.pcg_many`) over runs of consecutive samples with the same kind of preconditioner (mode and dtype),
    each run as long as its stacked operators fit `resources.batch_bytes`; each sample is checked and stopped as
    `solve_pcg` would stop it, so the solutions are the same up to rounding. Thread caps as `solve_pcg`'s, for a
    sample's preconditioner and for a run's PCG (its work: the run's samples together). Layers large enough for the
    circulant preconditioner (`linalg.circulant`) run one PCG per sample (no stacked circulant; on the host their
    stacked block-Jacobi operators would not fit `batch_bytes` anyway)."""
    if circulant_applies(problems[0].system):
        return [solve_pcg(problem, plan, options) for problem, plan in zip(problems, plans, strict=True)]
    weight = problems[0].weight
    budget = batch_bytes(weight.device)
    work = problems[0].layer.unknowns * weight[0].numel()
    solves: list[LayerSolve] = []
    run: list[tuple[LayerProblem, BlockJacobi]] = []
    for problem, plan in zip(problems, plans, strict=True):
        with cpu_threads(solve_threads(weight.device, work)):
            pre = _preconditioner(problem, plan)
        kind = (pre.mode, pre.dtype)
        full = budget is not None and (len(run) + 1) * _stacked_bytes(problem.system, pre) > budget
        if run and (full or kind != (run[0][1].mode, run[0][1].dtype)):
            solves += _solve_run(run, options, work)
            run = []
        run.append((problem, pre))
    return solves + _solve_run(run, options, work)


def _stacked_bytes(system: ConvSystem, pre: BlockJacobi) -> float:
    """What one sample adds to the stacked operators: its preconditioner's blocks (and K, Woodbury) and its K^T K."""
    parts = (pre.inverse, pre.kmat if pre.mode == "woodbury" else None, system.channel_gram())
    return sum(t.numel() * t.element_size() for t in parts if t is not None)


def _solve_run(run: list[tuple[LayerProblem, BlockJacobi]], options: RGAPOptions, work: float) -> list[LayerSolve]:
    """One batched PCG over a run of samples of one kind (`work`: one sample's, for the thread cap)."""
    systems = [problem.system for problem, _ in run]
    weight = systems[0].weight
    with cpu_threads(solve_threads(weight.device, len(run) * work)):
        starts = [system.weight_row_start() for system in systems]
        zeros = torch.zeros(systems[0].shape, dtype=weight.dtype, device=weight.device)
        x0 = torch.stack([zeros if x is None else x for x in starts])
        rhs = torch.stack([system.normal_rhs() for system in systems])
        pre = StackedBlockJacobi([p for _, p in run])
        result = pcg_many(StackedSystems(systems), rhs, pre, tol=options.tol, max_iter=options.max_iter, x0=x0)
        return [
            _layer_solve(
                problem, result.x[j], result.iterations[j], result.normal_residual_rel[j], options, "pcg-blockjacobi"
            )
            for j, (problem, _) in enumerate(run)
        ]


def _layer_solve(problem: LayerProblem, x: Tensor, iterations: int, normal_residual_rel: float,
                 options: RGAPOptions, label: str) -> LayerSolve:  # fmt: skip
    """The solve's record (`label`: the solver in layers.json); warns when PCG stopped short of attack.tol."""
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
        label,
        iterations=iterations,
        normal_residual_rel=normal_residual_rel,
        converged=converged,
    )
