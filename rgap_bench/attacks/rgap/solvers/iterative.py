"""A conv layer by preconditioned conjugate gradients on its matrix-free normal equations (no rank, any size)."""

from __future__ import annotations

import logging

from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.plan import LayerPlan
from rgap_bench.attacks.rgap.solvers.base import LayerProblem, LayerSolve
from rgap_bench.linalg.operators import BlockJacobi
from rgap_bench.linalg.pcg import pcg
from rgap_bench.linalg.resources import cpu_threads, dense_bytes, solve_threads

log = logging.getLogger(__name__)

# PCG counts as converged while its normal residual is within this factor of attack.tol: float rounding keeps the
# last digits from being reached on well-posed layers, a stall far above it means an ill-posed (deficient) layer.
CONVERGED_FACTOR = 1e3


def solve_pcg(problem: LayerProblem, plan: LayerPlan, options: RGAPOptions) -> LayerSolve:
    layer, system, weight = problem.layer, problem.system, problem.weight
    n = layer.unknowns
    with cpu_threads(solve_threads(weight.device, n * weight[0].numel())):
        result = pcg(
            system.normal,
            system.normal_rhs(),
            # float32 preconditioning only where the solution is unique (proven full rank): on a deficient layer the
            # preconditioner picks which of the solutions PCG returns, and that must not change
            BlockJacobi(system, compact=plan.certificate is not None or plan.known_rank == n),
            tol=options.tol,
            max_iter=options.max_iter,
            x0=system.weight_row_start(),
        )
    converged = result.normal_residual_rel <= CONVERGED_FACTOR * options.tol
    if not converged:
        log.warning(
            "layer %d: PCG stopped at relative normal residual %.1e after %d iterations (attack.max_iter); "
            "the layer may be rank-deficient (check with python -m rgap_bench.rank). To measure its rank and "
            "solve its null space jointly with the layer below, use attack.rank=auto with "
            "attack.rank_max_unknowns >= %d (the dense path holds %d x %d matrices: %.1f GB)",
            layer.index, result.normal_residual_rel, result.iterations, n, n, n,
            dense_bytes(n, weight.dtype, weight.device) / 1e9,
        )  # fmt: skip
    x = result.x
    return LayerSolve(
        x.reshape(layer.in_shape),
        system.residual_rel(x),
        "pcg-blockjacobi",
        iterations=result.iterations,
        normal_residual_rel=result.normal_residual_rel,
        converged=converged,
    )
