"""The one place a layer's `LayerReport` (a row of layers.json) is built from its plan and its solve."""

from __future__ import annotations

import dataclasses
import logging
import math

from rgap_bench.attacks.rgap.layers import RGAPLayer, describe_op
from rgap_bench.attacks.rgap.plan import LayerPlan
from rgap_bench.attacks.rgap.solvers import LayerSolve
from rgap_bench.types import LayerReport

log = logging.getLogger("rgap_bench.attacks.rgap")  # one logger for the package: the progress lines of one attack
SOLVE_FIELDS = ("sigma_min_rel", "residual_rel", "solver", "iterations", "pattern_settled")  # copied as they are


def layer_report(layer: RGAPLayer, solve: LayerSolve, plan: LayerPlan | None, time_s: float) -> LayerReport:
    """The record of one solved layer; `plan` is None for the joint null-space solve. Logs one progress line
    (large inputs take minutes; the log says where the attack is)."""
    n = layer.unknowns
    geom = layer.geometry
    padded = geom.padded_unknowns if geom is not None else n
    proven = plan is not None and plan.certificate is not None
    rank = solve.rank if solve.rank is not None or plan is None else plan.known_rank
    deficiency = None if rank is None else n - rank
    note = solve.note
    if proven:
        note = f"full rank, proven by the gradient rows alone (sigma_min/sigma_max >= {plan.certificate**0.5:.1e})"
    if deficiency:
        note = f"rank-deficient: {deficiency} input directions are not determined"
        log.info("layer %d: %s", layer.index, note)
    report = LayerReport(
        layer.index,
        describe_op(layer.op),
        unknowns=n,
        unknowns_padded=padded,
        gradient_constraints=layer.grad.numel(),
        weight_constraints=math.prod(layer.out_shape),
        padding_constraints=padded - n,
        rank=rank,
        rank_deficiency=deficiency,
        rank_method="gradient-row bound" if proven else "",
        time_s=time_s,
        note=note,
        **{name: getattr(solve, name) for name in SOLVE_FIELDS},
    )
    iterations = f", {report.iterations} iterations" if report.iterations else ""
    residual = f", residual {report.residual_rel:.1e}" if report.residual_rel is not None else ""
    log.info("layer %d (%s): %s%s%s, %.2f s", report.index, report.layer, report.solver, iterations, residual,
             report.time_s)  # fmt: skip
    return report


def completed_below(report: LayerReport, lower: int) -> LayerReport:
    """The deficient layer's record once the layer below has solved its null space."""
    return dataclasses.replace(report, note=f"{report.note}; completed jointly with layer {lower} below")
