"""A conv layer's rank, null space and solution without a dense matrix: PCG on the solve and random probes at once.

The default for conv layers whose rank is wanted (attack.rank=auto) and that neither the gradient rows alone nor
the weight rows' symbol prove full rank (`plan._full_rank_certificate`). One block PCG run
(`rgap_bench.linalg.krylov`) solves the layer's normal equations and p = (predicted null space) + PROBES random
consistent systems; a Rayleigh-Ritz step on the probes' errors gives the rank at attack.rcond, the null basis the
joint solve below needs, and the certificate written to layers.json. When PCG
does not converge, or every probe came back null (the null space may be larger than the block), the dense path
(`solvers.dense`) decides instead, if its matrices fit in free memory.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.plan import LayerPlan
from rgap_bench.attacks.rgap.solvers.base import LayerProblem, LayerSolve
from rgap_bench.attacks.rgap.solvers.dense import solve_dense
from rgap_bench.attacks.rgap.solvers.iterative import CONVERGED_FACTOR, solve_pcg
from rgap_bench.linalg.batched import block_normal, block_preconditioner
from rgap_bench.linalg.krylov import NullProbe, block_pcg, null_probe
from rgap_bench.linalg.operators import BlockJacobi
from rgap_bench.linalg.resources import cpu_threads, dense_memory, solve_threads
from rgap_bench.linalg.spectrum import largest_eigenvalue

log = logging.getLogger(__name__)

PROBES = 1  # random probes beyond the counting bound's predicted null space: a block that comes back all null
# may hold only part of a larger null space, and the dense path decides
MARGIN = 1e-6  # a smallest Ritz value below MARGIN * lambda_max is too close to the threshold for the loose probes
PROBE_TOL = 1e-8  # a full-rank verdict needs only this (module docstring of rgap_bench.linalg.krylov)


def certificate(probe: NullProbe, top: float) -> str:
    """The verdict in words for layers.json: what the probe measured against the threshold."""
    lam, res = probe.lambda_min, probe.lambda_min_residual
    above = "" if lam is None else f"smallest Ritz value above it {lam / top:.1e} (residual {res / top:.1e})"
    if probe.deficiency:
        worst = float(probe.residuals[: probe.deficiency].max()) / top
        return (
            f"{probe.deficiency} null directions (|G v| <= {worst:.1e}), {above}, threshold rcond "
            f"{probe.threshold / top:.0e}, relative to lambda_max"
        )
    return f"full rank: {above} > rcond {probe.threshold / top:.0e}, relative to lambda_max"


def _fallback(problem: LayerProblem, plan: LayerPlan, options: RGAPOptions, why: str) -> LayerSolve:
    layer = problem.layer
    if dense_memory(layer.unknowns, problem.weight.dtype, problem.weight.device).fits():
        log.info("layer %d: %s; measuring the rank densely instead", layer.index, why)
        solve = solve_dense(problem, plan, options)
        return dataclasses.replace(solve, note=f"{why}: dense fallback")
    log.warning("layer %d: %s, and the dense path would not fit in free memory: rank not measured", layer.index, why)
    return dataclasses.replace(solve_pcg(problem, plan, options), note=why)


def solve_krylov(problem: LayerProblem, plan: LayerPlan, options: RGAPOptions) -> LayerSolve:
    layer, system, weight = problem.layer, problem.system, problem.weight
    n = layer.unknowns
    with cpu_threads(solve_threads(weight.device, n * weight[0].numel())):
        apply = block_normal(system)
        precondition = block_preconditioner(BlockJacobi(system))
        top = largest_eigenvalue(apply, n, like=weight)
        gen = torch.Generator(device=weight.device).manual_seed(0)
        probes = torch.randn(n, plan.null_hint + PROBES, dtype=weight.dtype, device=weight.device, generator=gen)
        rhs = torch.cat([system.normal_rhs().reshape(-1, 1), apply(probes)], dim=1)
        # the solution and the predicted null directions to attack.tol, the verdict's probes to PROBE_TOL
        tol = torch.full((rhs.shape[1],), max(options.tol, PROBE_TOL), dtype=rhs.dtype, device=rhs.device)
        tol[: 1 + plan.null_hint] = options.tol
        result = block_pcg(apply, rhs, precondition, tol=tol, max_iter=options.max_iter)
        probe = null_probe(apply, probes, result.x[:, 1:], options.rcond * top)
    worst = float((result.residual_rel / tol).max())
    if worst > CONVERGED_FACTOR:
        return _fallback(problem, plan, options, f"PCG stopped at {worst:.0e} x its tolerance")
    if probe.deficiency == probes.shape[1]:
        return _fallback(problem, plan, options, f"all {probe.deficiency} probes are null")
    if probe.deficiency > plan.null_hint:  # the loose probes found more than predicted: their null vectors are rough
        return _fallback(problem, plan, options, f"{probe.deficiency} null directions, {plan.null_hint} predicted")
    lam = probe.lambda_min
    if probe.deficiency == 0 and lam is not None and lam < MARGIN * top:
        return _fallback(problem, plan, options, f"smallest Ritz value {lam / top:.1e} of lambda_max, near rcond")
    x = result.x[:, 0]
    null = probe.null_basis if probe.deficiency else None
    if null is not None:
        x = x - null @ (null.T @ x)  # the minimum-norm solution, as the dense path reports
    x = x.reshape(system.shape)
    return LayerSolve(
        x.reshape(layer.in_shape),
        system.residual_rel(x),
        "pcg-blockjacobi",
        rank=n - probe.deficiency,
        sigma_min_rel=0.0 if null is not None else None if lam is None else (lam / top) ** 0.5,  # a Ritz estimate
        null_basis=null,
        iterations=result.iterations,
        normal_residual_rel=float(result.residual_rel[0]),
        converged=True,
        rank_method="krylov probe",
        note=certificate(probe, top),
    )
