"""`attack=hgap`: the hybrid of R-GAP and gradient matching (R-GAP paper, section on H-GAP).

R-GAP's closed-form recursion runs first. If every layer's system is fully determined its answer is exact and is
returned as is. Otherwise the minimum-norm R-GAP solution (exact in every direction the gradients determine, wrong
only in the null space of the deficient layer) is the starting point of a gradient-matching run, optionally next
to `random_restarts` matching runs from random inputs, and (`dlg_candidate`) next to `attack=dlg`'s own run: its
settings, seed and random start, so H-GAP's candidates contain DLG's answer itself. The answer is whichever of
{R-GAP, matched runs, DLG} has the smallest float64 gradient distance to the shared update, a choice that uses
only the update, so H-GAP is never worse than its parts (DLG included) by the criterion an attacker can compute.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from rgap_bench.attacks.dlg import DLG, DLGOptions
from rgap_bench.attacks.gradient_matching import GradientMatchingAttack, MatchingOptions
from rgap_bench.attacks.matching import MatchingTarget
from rgap_bench.attacks.rgap import RGAP
from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.status import join
from rgap_bench.errors import ConfigError, UnsupportedModelError
from rgap_bench.options import build_options
from rgap_bench.types import ClientUpdate, LayerReport, Reconstruction

log = logging.getLogger(__name__)


@dataclass
class HGAPMatchingOptions(MatchingOptions):
    """H-GAP's matching stage: inputs boxed to [0, 1] and labels inferred; its restarts are set by
    `HGAPOptions.random_restarts` (one run from the R-GAP solution plus that many from random inputs)."""

    name: str = "hgap/matching"
    box: bool = True
    labels: str = "infer"


@dataclass
class HGAPOptions:
    """An R-GAP node and a matching node (`attack.rgap.*`, `attack.matching.*`): every option of both is reachable."""

    name: str = "hgap"
    rgap: RGAPOptions = field(default_factory=RGAPOptions)
    matching: HGAPMatchingOptions = field(default_factory=HGAPMatchingOptions)
    random_restarts: int = 1  # extra matching runs from random inputs next to the one from R-GAP
    # also run attack=dlg itself wherever matching runs: DLG's objective, soft labels, no box and random start, with
    # the matching node's budget, seed, dtype and tolerance (attack=dlg with those gives the same image)
    dlg_candidate: bool = True

    def __post_init__(self) -> None:
        if self.random_restarts < 0:
            raise ConfigError(f"attack.random_restarts must be >= 0, got {self.random_restarts}")
        if self.matching.restarts != 1:
            raise ConfigError(
                "attack.matching.restarts is not used by H-GAP: set attack.random_restarts (matching runs from random "
                "inputs next to the one from the R-GAP solution)"
            )


def _unmeasured_relu(report: LayerReport) -> bool:
    """Below a ReLU, a layer whose dead units dropped weight rows and whose rank was not measured (a layer below an
    open one also reports `determined: None`, but its own rank is measured: the open layer above is the one matched)."""
    return bool(report.dead_rows_dropped) and report.determined is None and report.rank_deficiency is None


class HGAP:
    """The attack plugin (`attack=hgap`): R-GAP, then gradient matching where R-GAP's answer is not exact."""

    update_kinds: tuple[str, ...] = ("gradient",)

    def __init__(self, options: HGAPOptions | None = None, /, **overrides: Any) -> None:
        self.options = opts = build_options(HGAPOptions, options, overrides)
        self.name = opts.name
        self.dtype = opts.rgap.dtype
        self.rgap = RGAP(opts.rgap)
        self.box = opts.matching.box
        self.matcher = GradientMatchingAttack(dataclasses.replace(opts.matching, restarts=1 + opts.random_restarts))
        shared = ("max_iterations", "seed", "dtype", "tolerance", "progress")
        dlg = DLGOptions(**{key: getattr(opts.matching, key) for key in shared})
        self.dlg = DLG(dlg) if opts.dlg_candidate else None

    def __call__(self, model: nn.Module, update: ClientUpdate) -> Reconstruction:
        unsupported = ""
        try:
            closed = self.rgap(model, update)
        except UnsupportedModelError as exc:
            log.warning("%s: R-GAP cannot run (%s); gradient matching from random inputs only", self.name, exc)
            closed, unsupported = None, f"R-GAP cannot run ({exc}), matched from random inputs"
        if closed is not None and closed.combined:  # one image for a batch: no per-sample start for matching
            reason = closed.info.get("batch", {}).get("combined_reason", "")
            log.warning("%s: R-GAP could not split the batch (%s); gradient matching from random inputs", self.name,
                        reason)  # fmt: skip
            closed, unsupported = None, f"R-GAP could not split the batch ({reason}), matched from random inputs"
        # a ReLU layer that lost weight rows and whose rank was not measured may be open too: match it
        layers = [] if closed is None else closed.layers
        deficient = [r.index for r in layers if r.rank_deficiency or _unmeasured_relu(r)]
        if closed is not None and not deficient:
            return _with_info(closed, hgap={"stage": "rgap", "deficient_layers": []})
        joint = [] if closed is None else [r.status == "exact" for r in closed.layers if r.pattern_settled is not None]
        if deficient and len(joint) == len(deficient) and all(joint):
            # Every deficient layer was completed by an exact joint solve (pattern settled, joint system full
            # rank): R-GAP's answer is the unique one, and matching could only trade it for float32 rounding.
            return _with_info(closed, hgap={"stage": "rgap-joint", "deficient_layers": deficient})
        if deficient:
            log.info("%s: layers %s are rank-deficient; refining by gradient matching", self.name, deficient)
        target = MatchingTarget.from_update(model, update, self.matcher.options.dtype)
        init = None
        if closed is not None:
            init = closed.inputs.clamp(0, 1) if self.box else closed.inputs
        matched = self.matcher.reconstruct(target, init=init)
        candidates = {"rgap": closed, "matching": matched, "dlg": self.dlg(model, update) if self.dlg else None}
        candidates = {name: rec for name, rec in candidates.items() if rec is not None}
        if len(candidates) == 1:  # R-GAP could not run and DLG is off: the matched runs alone
            matched = _with_info(matched, hgap={"stage": "matching", "deficient_layers": deficient})
            return dataclasses.replace(matched, status_reason=join((matched.status_reason, unsupported)))
        # Judge all in float64: near an exact solution the float32 matching loss is rounding noise, and it would
        # hand the win to a matched image that is worse than the closed-form one.
        judge = MatchingTarget.from_update(model, update, "float64")
        metric = self.matcher.options.distance
        distances = {name: judge.distance(rec.inputs, rec.labels, soft=False, metric=metric)
                     for name, rec in candidates.items()}  # fmt: skip
        stage = min(distances, key=distances.__getitem__)  # ties: R-GAP, then matching, then DLG
        winner, distance = candidates[stage], distances[stage]
        status, reason = (closed.status, closed.status_reason) if closed is not None else ("failed", "")
        if stage != "rgap":  # graded on the float64 distance it won by
            attack = self.matcher if stage == "matching" else self.dlg
            status, reason = attack.status(distance, winner.inputs)
            how = "DLG's own run matched best" if stage == "dlg" else "H-GAP's matching run matched best"
            how = "refined by gradient matching" if stage == "matching" and closed is not None else how
            why = f"R-GAP left layers {deficient} rank-deficient" if closed is not None else unsupported
            reason = join((reason, f"{why}, {how}"))
        hgap = {
            "stage": stage,  # the candidate that won: rgap | matching | dlg
            "deficient_layers": deficient,
            "gradient_distances": distances,  # each candidate's float64 gradient distance, by name
            "rgap_gradient_distance": distances.get("rgap"),
            "matched_gradient_distance": distances["matching"],
            "dlg_gradient_distance": distances.get("dlg"),
            "best_restart": matched.info["best_restart"],  # 0: started from R-GAP; >0: from random inputs
        }
        return dataclasses.replace(
            winner,
            layers=closed.layers if closed is not None else winner.layers,
            gradient_distance=distance,
            status=status,
            status_reason=reason,
            info={**winner.info, "hgap": hgap},
        )


def _with_info(rec: Reconstruction, **extra: object) -> Reconstruction:
    """The record with more report-only detail (a new record: Reconstruction is frozen, its info is not shared)."""
    return dataclasses.replace(rec, info={**rec.info, **extra})
