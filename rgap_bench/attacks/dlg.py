"""`attack=dlg`: Deep Leakage from Gradients (Zhu, Liu, Han; NeurIPS 2019).

Dummy inputs and, when the labels are not shared, a dummy soft label, optimised jointly with L-BFGS to minimise
the squared Euclidean distance between their gradient and the shared one. No image prior, no box constraint.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rgap_bench.attacks.gradient_matching import GradientMatchingAttack


class DLG(GradientMatchingAttack):
    """The shared matching loop with this attack's published settings as defaults (the YAML repeats them)."""

    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        name="dlg", distance="euclidean", optimizer="lbfgs", lr=1.0, max_iterations=1000, labels="optimise"
    )

    def __init__(self, **settings: Any) -> None:
        super().__init__(**{**self.DEFAULTS, **settings})
