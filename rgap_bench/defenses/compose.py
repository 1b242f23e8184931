"""Ordered composition of defences, and the one builder every `conf/defense/*.yaml` option points at.

Hydra merges the options of a group selected as a list (`defense=[clipping,gaussian]`), so every option shares one
flat schema (`DefenseConfig`) and one `_target_` (`build_defense`): an option contributes its parameters at the top
level (`defense.sigma`, `defense.ratio`, ...) and one entry `steps.<name>: <class path>`. Merging keeps the
selection order, so `steps` lists the defences in the order they are applied. Adding a defence is one module, one
YAML file and its parameters in the schema.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.utils import get_class

from rgap_bench.defenses.base import Defense, relative_distortion
from rgap_bench.errors import ConfigError
from rgap_bench.types import ClientContext, ClientUpdate

# Keys of the defence config that configure the run around the defence, not a step.
RUN_KEYS = ("name", "seed", "utility", "utility_epochs", "utility_lr", "utility_batch_size", "utility_test_fraction")


class DefensePipeline:
    """Applies its defences in order; its report merges theirs with the end-to-end distortion and epsilon."""

    def __init__(self, defenses: Sequence[Defense], name: str | None = None) -> None:
        self.defenses = list(defenses)
        self.name = name or ("+".join(d.name for d in self.defenses) or "none")
        self._distortion = 0.0

    def __call__(self, update: ClientUpdate, context: ClientContext | None = None) -> ClientUpdate:
        out = update
        for defense in self.defenses:
            out = defense(out, context)
        self._distortion = relative_distortion(update.tensors, out.tensors) if self.defenses else 0.0
        return out

    def epsilon(self) -> float | None:
        """Total epsilon of the DP steps (basic composition over steps; None when no step is DP)."""
        values = [d.epsilon() for d in self.defenses if hasattr(d, "epsilon")]
        return math.fsum(values) if values else None

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = {"name": self.name, "distortion": self._distortion}
        report["steps"] = [d.report() for d in self.defenses]
        epsilon = self.epsilon()
        if epsilon is not None:
            report["epsilon"] = epsilon
            report["delta"] = sum(d.delta for d in self.defenses if hasattr(d, "delta"))
        return report


def build_defense(steps: Mapping[str, str], seed: int = 0, **params: Any) -> DefensePipeline:
    """Instantiate each step's class with the top-level parameters its constructor names.

    A parameter that is set (not None) but taken by no selected step is refused: `defense=gaussian defense.ratio=0.5`
    is a mistake, not a silent no-op. Each step gets its own seed (seed + position), so their noise is independent.
    """
    name = params.pop("name", None)
    for key in RUN_KEYS:
        params.pop(key, None)
    used: set[str] = set()
    defenses = []
    for i, (step, target) in enumerate(steps.items()):
        cls = get_class(target)
        accepted = set(inspect.signature(cls).parameters) - {"seed", "name"}
        kwargs = {k: v for k, v in params.items() if k in accepted and v is not None}
        used |= kwargs.keys()
        defenses.append(cls(**kwargs, seed=seed + i, name=step))
    unused = sorted(k for k, v in params.items() if v is not None and k not in used)
    if unused:
        raise ConfigError(
            f"defense parameters {unused} belong to no selected defence ({', '.join(steps) or 'none'}); "
            "select it, e.g. defense=[clipping,gaussian]"
        )
    return DefensePipeline(defenses, name=name if len(defenses) <= 1 and name else None)
