"""`attack=ig`: Inverting Gradients (Geiping, Bauermeister, Dröge, Moeller; NeurIPS 2020).

Cosine distance between gradients (blind to their scale) plus a total-variation prior, minimised by Adam on the
sign of the input gradient with a step schedule (x0.1 at 3/8, 5/8, 7/8 of the budget), inputs projected onto the
image range [0, 1] after every step, several restarts of which the best gradient match is kept. Labels are
recovered analytically as in iDLG when not shared.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rgap_bench.attacks.gradient_matching import GradientMatchingAttack


class InvertingGradients(GradientMatchingAttack):
    """The shared matching loop with this attack's published settings as defaults (the YAML repeats them)."""

    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        name="ig",
        distance="cosine",
        optimizer="adam",
        lr=0.1,
        max_iterations=2000,
        schedule="step",
        tolerance=1e-8,
        tv_weight=1e-4,
        signed=True,
        restarts=2,
        box=True,
        labels="infer",
    )

    def __init__(self, **settings: Any) -> None:
        super().__init__(**{**self.DEFAULTS, **settings})
