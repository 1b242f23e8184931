"""The one place a layer's `LayerReport` (a row of layers.json) is built from its plan and its solve, and graded.

A layer is `exact` when its solution fits its equations and is unique; every threshold is one the code already
treats as converged elsewhere:
- residual: ||A x - b|| / ||b|| below `null_space.CONSISTENT_RESIDUAL` (1e-3), the residual under which the joint
  solve calls a pattern consistent (clean float64 runs leave ~1e-6, float32 ~1e-6 too; noise leaves far more);
- PCG: normal residual within `iterative.CONVERGED_FACTOR` (1e3) x attack.tol, where the solver warns otherwise;
- uniqueness: a measured or proven rank with no deficiency, or a deficiency completed by an exact joint solve below;
- the joint solve: its activation pattern settled with a consistent solution, and the joint system (the layer's
  inputs + the free coefficients above) measured full rank at that pattern: a settled pattern with a tiny residual
  alone does not make the answer unique (`null_space.joint_rank`); H-GAP skips matching only on this criterion.
Anything else is `approximate` with the reason; a NaN/Inf solution or residual is `failed`.
"""

from __future__ import annotations

import dataclasses
import logging
import math

from torch import Tensor

from rgap_bench.attacks.rgap.layers import RGAPLayer, describe_op
from rgap_bench.attacks.rgap.null_space import CONSISTENT_RESIDUAL
from rgap_bench.attacks.rgap.plan import LayerPlan
from rgap_bench.attacks.rgap.solvers import LayerSolve
from rgap_bench.attacks.rgap.solvers.iterative import CONVERGED_FACTOR
from rgap_bench.attacks.status import join, non_finite, worst
from rgap_bench.types import LayerReport, Status

log = logging.getLogger("rgap_bench.attacks.rgap")  # one logger for the package: the progress lines of one attack
SOLVE_FIELDS = (
    "sigma_min_rel", "residual_rel", "solver", "iterations", "pattern_settled", "joint_rank", "joint_unknowns",
    "normal_residual_rel",
)  # fmt: skip
UNRESOLVED = "rank deficiency of {} left unresolved: the minimum-norm solution is wrong in those directions"


def joint_reason(report: LayerReport) -> str:
    """Why a settled joint solve is not unique, or "" when its joint system is proven full rank."""
    if report.joint_rank is None:
        return "joint rank not measured (too large for a dense factorisation): the solution may not be unique"
    open_ = report.joint_unknowns - report.joint_rank
    if open_ <= 0:
        return ""
    return (
        f"the joint system has rank {report.joint_rank} of {report.joint_unknowns} unknowns: {open_} directions "
        "stay open, along which other inputs give the same gradient (attack=hgap refines)"
    )


def layer_status(report: LayerReport, solve: LayerSolve) -> tuple[Status, str]:
    """Grade one solved layer (thresholds in the module docstring)."""
    broken = non_finite(solve.x)
    residual = report.residual_rel
    if broken or residual is None or not math.isfinite(residual):
        return "failed", broken or "the residual is NaN or Inf: the solve broke down"
    reasons = []
    if solve.converged is False:
        reasons.append(
            f"PCG not converged: normal residual {report.normal_residual_rel:.1e} > {CONVERGED_FACTOR:.0e} x "
            f"attack.tol after {report.iterations} iterations (attack.max_iter)"
        )
    if residual >= CONSISTENT_RESIDUAL:
        reasons.append(
            f"residual too large: {residual:.1e} >= {CONSISTENT_RESIDUAL:.0e} (noisy or inconsistent update)"
        )
    if report.pattern_settled is False:
        reasons.append("activation pattern not settled in the joint null-space solve")
    elif report.pattern_settled:
        reasons.append(joint_reason(report))
    elif report.pattern_settled is None and report.rank_deficiency is None:
        reasons.append("rank not measured (attack.rank, attack.rank_max_unknowns): the solution may not be unique")
    if report.rank_deficiency:
        reasons.append(UNRESOLVED.format(report.rank_deficiency))
    reasons = [r for r in reasons if r]
    return ("approximate" if reasons else "exact"), join(reasons)


def run_status(layers: list[LayerReport], clamped: bool) -> tuple[Status, str]:
    """The run's grade: its worst layer, with every layer's reason; a clamped output scalar is approximate too."""
    reasons = [f"layer {r.index}: {r.status_reason}" for r in layers if r.status != "exact"]
    if clamped:
        reasons.insert(0, "output scalar clamped to the logistic minimum (noise pushed <w, dL/dw> out of range)")
    status = worst([r.status for r in layers] + (["approximate"] if clamped else []))
    return status, join(reasons)


def dead_counts(layer: RGAPLayer, alive: Tensor | None, k: Tensor | None) -> tuple[int | None, int | None]:
    """Below a ReLU: (weight rows dropped as dead, gradient rows left all zero); (None, None) otherwise."""
    if alive is None or k is None:
        return None, None
    dead = int((~alive).sum())
    per_filter = k.reshape(layer.op.weight.shape[0], -1)
    silent = int((per_filter == 0).all(dim=1).sum())  # a filter (unit) whose k is 0 at every position
    return dead, silent * layer.op.weight[0].numel()


def layer_report(
    layer: RGAPLayer,
    solve: LayerSolve,
    plan: LayerPlan | None,
    time_s: float,
    *,
    alive: Tensor | None = None,
    k: Tensor | None = None,
) -> LayerReport:
    """The record of one solved layer; `plan` is None for the joint null-space solve; `alive` and `k` (a ReLU
    layer) count what the dead units cost. Logs one progress line (large inputs take minutes; the log says where
    the attack is)."""
    n = layer.unknowns
    geom = layer.geometry
    padded = geom.padded_unknowns if geom is not None else n
    proven = plan is not None and plan.certificate is not None
    rank = solve.rank if solve.rank is not None or plan is None else plan.known_rank
    deficiency = None if rank is None else n - rank
    note = solve.note
    if proven:
        by = {
            "gradient-row bound": "the gradient rows alone",
            "weight-row symbol bound": "the weight rows' Fourier symbol",
        }.get(plan.proof, "the gradient rows and, on the pixel phases they leave open, the weight rows' symbol")
        note = f"full rank, proven by {by} (sigma_min/sigma_max >= {plan.certificate**0.5:.1e})"
    if deficiency:
        note = f"rank-deficient: {deficiency} input directions are not determined"
        log.info("layer %d: %s", layer.index, note)
    dead, zero_rows = dead_counts(layer, alive, k)
    if dead and rank is None:
        note = join((note, f"{dead} weight rows dropped (dead ReLU outputs); rank not measured (attack.rank)"))
    report = LayerReport(
        layer.index,
        describe_op(layer.op, layer.pool),
        unknowns=n,
        unknowns_padded=padded,
        gradient_constraints=layer.grad.numel(),
        weight_constraints=math.prod(layer.out_shape),
        padding_constraints=padded - n,
        rank=rank,
        rank_deficiency=deficiency,
        rank_method=plan.proof if proven else solve.rank_method,
        time_s=time_s,
        note=note,
        dead_rows_dropped=dead,
        zero_gradient_rows=zero_rows,
        # the joint solve measures no rank: a settled pattern that fits every equation pins its input down
        determined=(solve.pattern_settled or None) if deficiency is None else deficiency == 0,
        **{name: getattr(solve, name) for name in SOLVE_FIELDS},
    )
    report.status, report.status_reason = layer_status(report, solve)
    iterations = f", {report.iterations} iterations" if report.iterations else ""
    residual = f", residual {report.residual_rel:.1e}" if report.residual_rel is not None else ""
    log.info("layer %d (%s): %s%s%s, %.2f s", report.index, report.layer, report.solver, iterations, residual,
             report.time_s)  # fmt: skip
    return report


def completed_below(report: LayerReport, lower: LayerReport) -> LayerReport:
    """The deficient layer's record once the layer below has solved its null space: its deficiency is resolved
    when the joint solve's pattern settled and its joint system is full rank, and stays the reason otherwise."""
    note = f"{report.note}; completed jointly with layer {lower.index} below"
    if not lower.pattern_settled:
        return dataclasses.replace(report, note=note)
    unresolved = UNRESOLVED.format(report.rank_deficiency)
    reasons = [r if r != unresolved else _partly_resolved(report, lower) for r in report.status_reason.split("; ")]
    reasons = [r for r in reasons if r]
    status = report.status if report.status == "failed" else "approximate" if reasons else "exact"
    unique = not _partly_resolved(report, lower)  # the joint solve settled and its system has full rank
    return dataclasses.replace(report, note=note, status=status, status_reason=join(reasons), determined=unique)


def below_open(reports: list[LayerReport]) -> list[LayerReport]:
    """Reports (input layer first) with every layer below an open one (measured rank-deficient and not completed by
    a joint solve) marked not known: its outputs, its dead units and its `determined` were read from the wrong
    estimate the open layer handed down, so they describe the system R-GAP solved, not the client's input."""
    out = list(reports)
    open_ = None
    for i in range(len(out) - 1, -1, -1):
        report = out[i]
        if open_ is not None and report.pattern_settled is None:  # a joint solve carries its own grade
            reason = f"its outputs come from an undetermined layer above (layer {open_})"
            status = report.status if report.status == "failed" else "approximate"
            out[i] = dataclasses.replace(
                report, determined=None, status=status, status_reason=join((report.status_reason, reason))
            )
        if open_ is None and report.determined is False:
            open_ = report.index
    return out


def _partly_resolved(report: LayerReport, lower: LayerReport) -> str:
    """The deficiency's reason once a settled joint solve below took it on: "" when that solve is unique."""
    if not joint_reason(lower):
        return ""
    if lower.joint_rank is None:
        return f"rank deficiency of {report.rank_deficiency}: the joint solve with layer {lower.index} is not unique"
    return (
        f"rank deficiency of {report.rank_deficiency} only partly resolved: the joint solve with layer {lower.index} "
        f"below leaves {lower.joint_unknowns - lower.joint_rank} directions open"
    )
