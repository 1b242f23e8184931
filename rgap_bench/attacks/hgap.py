"""`attack=hgap`: the hybrid of R-GAP and gradient matching (R-GAP paper, section on H-GAP).

R-GAP's closed-form recursion runs first. If every layer's system is fully determined its answer is exact and is
returned as is. Otherwise the minimum-norm R-GAP solution (exact in every direction the gradients determine, wrong
only in the null space of the deficient layer) is the starting point of a gradient-matching run, optionally next
to `random_restarts` matching runs from random inputs (plain DLG). The answer is whichever of {R-GAP, matched runs}
has the smallest gradient distance to the shared update, a choice that uses only the update, so H-GAP is never
worse than its parts by the criterion an attacker can compute.
"""

from __future__ import annotations

import dataclasses
import logging

from torch import nn

from rgap_bench.attacks.gradient_matching import GradientMatchingAttack
from rgap_bench.attacks.matching import MatchingTarget
from rgap_bench.attacks.rgap import RGAP
from rgap_bench.errors import UnsupportedModelError
from rgap_bench.types import ClientUpdate, Reconstruction

log = logging.getLogger(__name__)


class HGAP:
    """The attack plugin (`attack=hgap`): R-GAP, then gradient matching where R-GAP's answer is not exact."""

    update_kinds: tuple[str, ...] = ("gradient",)

    def __init__(
        self,
        name: str = "hgap",
        dtype: str = "float64",
        rank: str = "auto",
        rank_max_unknowns: int = 6000,
        null_max_unknowns: int = 16000,
        distance: str = "euclidean",
        optimizer: str = "lbfgs",
        lr: float = 1.0,
        max_iterations: int = 1000,
        schedule: str = "none",
        tolerance: float = 1e-10,
        tv_weight: float = 0.0,
        signed: bool = False,
        box: bool = True,
        random_restarts: int = 1,
        labels: str = "infer",
        seed: int = 0,
        matching_dtype: str = "float32",
        progress: bool = True,
    ) -> None:
        self.name = name
        self.dtype = dtype
        self.rgap = RGAP(
            dtype=dtype, rank=rank, rank_max_unknowns=rank_max_unknowns, null_max_unknowns=null_max_unknowns
        )
        self.box = box
        self.matcher = GradientMatchingAttack(
            name=f"{name}/matching", distance=distance, optimizer=optimizer, lr=lr, max_iterations=max_iterations,
            schedule=schedule, tolerance=tolerance, tv_weight=tv_weight, signed=signed, restarts=1 + random_restarts,
            box=box, labels=labels, seed=seed, dtype=matching_dtype, progress=progress,
        )  # fmt: skip

    def __call__(self, model: nn.Module, update: ClientUpdate) -> Reconstruction:
        try:
            closed = self.rgap(model, update)
        except UnsupportedModelError as exc:
            log.warning("%s: R-GAP cannot run (%s); gradient matching from random inputs only", self.name, exc)
            closed = None
        deficient = [] if closed is None else [r.index for r in closed.layers if r.rank_deficiency]
        if closed is not None and not deficient:
            closed.info["hgap"] = {"stage": "rgap", "deficient_layers": []}
            return closed
        joint = [] if closed is None else [r.pattern_settled for r in closed.layers if r.pattern_settled is not None]
        if deficient and len(joint) == len(deficient) and all(joint):
            # Every deficient layer was completed jointly with a settled activation pattern: R-GAP's answer fits
            # every equation, and matching could only trade it for float32 rounding.
            closed.info["hgap"] = {"stage": "rgap-joint", "deficient_layers": deficient}
            return closed
        if deficient:
            log.info("%s: layers %s are rank-deficient; refining by gradient matching", self.name, deficient)
        target = MatchingTarget.from_update(model, update, self.matcher.dtype)
        init = None
        if closed is not None:
            init = closed.inputs.clamp(0, 1) if self.box else closed.inputs
        matched = self.matcher.reconstruct(target, init=init)
        matched.info["hgap"] = {"stage": "matching", "deficient_layers": deficient}
        if closed is None:
            return matched
        # Judge both in float64: near an exact solution the float32 matching loss is rounding noise, and it would
        # hand the win to a matched image that is worse than the closed-form one.
        judge = MatchingTarget.from_update(model, update, "float64")
        rgap_distance = judge.distance(closed.inputs, closed.labels, soft=False, metric=self.matcher.distance)
        matched_distance = judge.distance(matched.inputs, matched.labels, soft=False, metric=self.matcher.distance)
        winner = closed if rgap_distance <= matched_distance else matched
        winner = dataclasses.replace(
            winner, layers=closed.layers, gradient_distance=min(rgap_distance, matched_distance)
        )
        winner.info["hgap"] = {
            "stage": "rgap" if winner is closed else "matching",
            "deficient_layers": deficient,
            "rgap_gradient_distance": rgap_distance,
            "matched_gradient_distance": matched_distance,
            "best_restart": matched.info["best_restart"],  # 0: started from R-GAP; >0: from random inputs
        }
        return winner
