"""The gradient-matching attack that DLG, iDLG and Inverting Gradients configure differently.

One class, three sets of defaults: the papers differ only in the distance (squared Euclidean vs cosine), the prior
(none vs total variation), the optimiser (L-BFGS vs signed Adam with a step schedule), restarts, the box constraint
and how labels are obtained (optimised soft labels vs analytic recovery). Labels the client shared
(`metadata.labels`, the paper's threat model) are always used when present.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rgap_bench.attacks.labels import infer_labels
from rgap_bench.attacks.matching import (
    DISTANCES,
    DTYPES,
    LoopResult,
    LoopSettings,
    MatchingTarget,
    optimise,
    total_variation,
)
from rgap_bench.attacks.status import matching_status
from rgap_bench.errors import ConfigError
from rgap_bench.options import build_options
from rgap_bench.types import ClientUpdate, Reconstruction, Status

log = logging.getLogger(__name__)

LABEL_MODES = ("optimise", "infer")
INITS = ("uniform", "normal")


@dataclass
class Hypothesis:
    """Fixed labels (B,) to match under, or None for a jointly optimised soft label."""

    labels: Tensor | None
    source: str  # shared | inferred | optimised


@dataclass
class Candidate:
    inputs: Tensor
    labels: Tensor
    distance: float
    result: LoopResult
    hypothesis: Hypothesis
    restart: int


@dataclass
class MatchingOptions:
    """The matching loop's options: the single home of their defaults, which are DLG's (the common case).

    DLG, iDLG and Inverting Gradients subclass this with the settings their papers change; H-GAP nests one.
    """

    name: str = "matching"
    distance: str = "euclidean"  # euclidean (relative squared distance) | cosine
    optimizer: str = "lbfgs"  # lbfgs | adam
    lr: float = 1.0
    max_iterations: int = 1000  # budget in gradient evaluations, per restart and label hypothesis
    schedule: str = "none"  # none | step (lr x0.1 at 3/8, 5/8, 7/8 of the budget; adam only)
    tolerance: float = 1e-10  # early stop once the gradient distance is at or below this
    tv_weight: float = 0.0  # total-variation prior weight
    signed: bool = False  # adam on the sign of the input gradient
    restarts: int = 1  # random restarts; the best gradient match is kept
    box: bool = False  # project the inputs onto [0, 1] after every step
    labels: str = "optimise"  # when not shared: optimise (soft label, DLG) | infer (analytic, iDLG)
    init: str = "uniform"  # uniform [0, 1) | normal
    seed: int = 0  # the attack's own generator: same seed, same reconstruction
    dtype: str = "float32"  # float32 | float64
    progress: bool = True  # rich progress bar (only on a terminal)

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ConfigError(f"{self.name}: distance must be one of {sorted(DISTANCES)}, got {self.distance!r}")
        if self.labels not in LABEL_MODES:
            raise ConfigError(f"{self.name}: labels must be one of {LABEL_MODES}, got {self.labels!r}")
        if self.init not in INITS:
            raise ConfigError(f"{self.name}: init must be one of {INITS}, got {self.init!r}")
        if self.restarts < 1:
            raise ConfigError(f"{self.name}: restarts must be >= 1, got {self.restarts}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"{self.name}: dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")


class GradientMatchingAttack:
    """Find inputs whose gradient matches the shared one; `__call__(model, update)` sees nothing else."""

    update_kinds: tuple[str, ...] = ("gradient",)  # FedSGD gradients (the runner converts FedAvg deltas)
    Options: ClassVar[type[MatchingOptions]] = MatchingOptions

    def __init__(self, options: MatchingOptions | None = None, /, **overrides: Any) -> None:
        self.options = opts = build_options(self.Options, options, overrides)
        self.name = opts.name
        loop_keys = ("optimizer", "lr", "max_iterations", "schedule", "tolerance", "signed", "progress")
        self.settings = LoopSettings(
            **{key: getattr(opts, key) for key in loop_keys}, box=(0.0, 1.0) if opts.box else None
        )

    # ------------------------------------------------------------------------------------------------ public

    def __call__(self, model: nn.Module, update: ClientUpdate) -> Reconstruction:
        target = MatchingTarget.from_update(model, update, self.options.dtype)
        return self.reconstruct(target)

    def reconstruct(self, target: MatchingTarget, init: Tensor | None = None) -> Reconstruction:
        """Match under every label hypothesis and restart; keep the best gradient match.

        `init` replaces the random start of the first restart (H-GAP starts from the R-GAP solution).
        """
        generator = torch.Generator().manual_seed(self.options.seed)
        candidates = []
        for hypothesis in self._hypotheses(target):
            for restart in range(self.options.restarts):
                start = init if (init is not None and restart == 0) else None
                candidates.append(self._run(target, hypothesis, restart, generator, start))
        best = min(candidates, key=lambda c: c.distance)
        inputs = best.inputs.detach().float().cpu()
        status, reason = self.status(best.distance, inputs, best.result)
        return Reconstruction(
            inputs=inputs,
            labels=best.labels.detach().cpu(),
            gradient_distance=best.distance,
            status=status,
            status_reason=reason,
            info={
                "distance": self.options.distance,
                "gradient_distance": best.distance,
                "label_source": best.hypothesis.source,
                "best_restart": best.restart,
                "evaluations": sum(c.result.evaluations for c in candidates),
                "stopped": best.result.stopped,
                "candidates": [
                    {
                        "labels": c.labels.tolist(),
                        "restart": c.restart,
                        "gradient_distance": c.distance,
                        "evaluations": c.result.evaluations,
                        "stopped": c.result.stopped,
                    }
                    for c in candidates
                ],
                "trace": best.result.trace,
            },
        )

    def status(self, distance: float, inputs: Tensor, result: LoopResult | None = None) -> tuple[Status, str]:
        """Exact only at the loop's own stopping tolerance (`attacks.status.matching_status`)."""
        detail = "" if result is None else f"after {result.evaluations} evaluations ({result.stopped})"
        return matching_status(distance, self.settings.tolerance, inputs, detail)

    # ----------------------------------------------------------------------------------------------- internal

    def _hypotheses(self, target: MatchingTarget) -> list[Hypothesis]:
        if target.shared_labels is not None:
            return [Hypothesis(target.shared_labels, "shared")]
        if self.options.labels == "infer":
            inferred = infer_labels(target)
            if inferred:
                return [Hypothesis(labels, "inferred") for labels in inferred]
            log.info("%s: labels cannot be inferred for this update; optimising soft labels", self.name)
        return [Hypothesis(None, "optimised")]

    def _initial_inputs(self, target: MatchingTarget, generator: torch.Generator) -> Tensor:
        shape = (target.batch_size, *target.input_shape)
        x = (
            torch.rand(shape, generator=generator)
            if self.options.init == "uniform"
            else torch.randn(shape, generator=generator)
        )
        return x.to(device=target.device, dtype=target.dtype)

    def _run(
        self,
        target: MatchingTarget,
        hypothesis: Hypothesis,
        restart: int,
        generator: torch.Generator,
        start: Tensor | None,
    ) -> Candidate:
        x = self._initial_inputs(target, generator)  # drawn even when replaced, so restarts stay reproducible
        if start is not None:
            x = start.detach().to(device=target.device, dtype=target.dtype).reshape(x.shape).clone()
        variables = [x.requires_grad_(True)]
        soft = hypothesis.labels is None
        if soft:
            shape = target.loss.soft_label_shape(target.batch_size, target.outputs)
            variables.append(torch.randn(shape, generator=generator).to(target.device, target.dtype).requires_grad_())
        metric = DISTANCES[self.options.distance]

        def objective(v: list[Tensor]) -> tuple[Tensor, Tensor]:
            labels = v[1] if soft else hypothesis.labels
            dist = metric(target.gradients(v[0], labels, soft), target.shared)
            total = dist + self.options.tv_weight * total_variation(v[0]) if self.options.tv_weight else dist
            return total, dist

        result = optimise(variables, objective, self.settings, f"{self.name} (restart {restart})")
        inputs = result.variables[0]
        if self.settings.box is not None:
            inputs = inputs.clamp(*self.settings.box)
        labels = target.loss.hard_labels(result.variables[1]) if soft else hypothesis.labels
        # The final score is the pure gradient distance at the returned point (no prior), comparable across runs.
        distance = target.distance(inputs, result.variables[1] if soft else labels, soft, self.options.distance)
        distance = distance if math.isfinite(distance) else math.inf
        log.info(
            "%s: labels %s (%s), restart %d: gradient distance %.3e after %d evaluations (%s)",
            self.name, labels.tolist(), hypothesis.source, restart, distance, result.evaluations, result.stopped,
        )  # fmt: skip
        return Candidate(inputs, labels, distance, result, hypothesis, restart)
