"""Ordered composition of defences, and the one builder the `defense` config node points at.

Each defence has its own parameter node, `defense.<name>.*`, validated by that defence's options dataclass; the
run-level settings (`seed`, `utility`, ...) stay at `defense.*` (`DefenseSettings`). Hydra merges the options of a
group selected as a list (`defense=[clipping,gaussian]`) in the selection order, so the nodes arrive in the order
the defences are applied. Adding a defence is one module, one YAML file and its class in `config.DEFENSES`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from hydra.utils import get_class

from rgap_bench.defenses.base import Defense, relative_distortion
from rgap_bench.errors import ConfigError
from rgap_bench.options import build_options
from rgap_bench.types import ClientContext, ClientUpdate


@dataclass
class DefenseSettings:
    """The run-level settings of the defence node: the pipeline's seed and the optional utility run."""

    seed: int = 0  # noise seed (step i uses seed + i)
    utility: bool = False  # also train with the defence for a few epochs and report test accuracy
    utility_epochs: int = 3
    utility_lr: float = 0.05
    utility_batch_size: int = 8
    utility_test_fraction: float = 0.2  # held-out share of the data plugin's dataset


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


def build_defense(**config: Any) -> DefensePipeline:
    """The pipeline of the defences whose nodes `config` holds, in their order, each with its own seed + position.

    A node is a selected defence only if it carries the `_target_` its YAML option gives it: a parameter set for a
    defence that is not selected (`defense=gaussian defense.pruning.ratio=0.5`), or a misspelt or old flat setting
    (`defense.sigma`), is refused rather than silently ignored.
    """
    config = {k: v for k, v in config.items() if k not in ("_target_", "_recursive_")}
    run_keys = [f.name for f in fields(DefenseSettings)]
    settings = build_options(DefenseSettings, {k: v for k, v in config.items() if k in run_keys})
    steps = {k: v for k, v in config.items() if k not in run_keys}
    selected = [k for k, v in steps.items() if isinstance(v, Mapping) and "_target_" in v]
    stray = [k for k in steps if k not in selected]
    if stray:
        raise ConfigError(
            f"defense.{stray[0]} is neither a run setting ({', '.join(run_keys)}) nor a selected defence "
            f"({', '.join(selected) or 'none'}); a defence's parameters live at defense.<name>.<parameter> and need "
            "the defence selected, e.g. defense=[clipping,gaussian] defense.gaussian.sigma=1e-3"
        )
    defenses = []
    for i, name in enumerate(selected):
        node = dict(steps[name])
        cls = get_class(node.pop("_target_"))
        defenses.append(cls(node, seed=settings.seed + i, name=name))
    return DefensePipeline(defenses)
