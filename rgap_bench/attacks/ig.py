"""`attack=ig`: Inverting Gradients (Geiping, Bauermeister, Dröge, Moeller; NeurIPS 2020).

Cosine distance between gradients (blind to their scale) plus a total-variation prior, minimised by Adam on the
sign of the input gradient with a step schedule (x0.1 at 3/8, 5/8, 7/8 of the budget), inputs projected onto the
image range [0, 1] after every step, several restarts of which the best gradient match is kept. Labels are
recovered analytically as in iDLG when not shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rgap_bench.attacks.gradient_matching import GradientMatchingAttack, MatchingOptions


@dataclass
class IGOptions(MatchingOptions):
    """The paper's settings, where they differ from the matching loop's defaults."""

    name: str = "ig"
    distance: str = "cosine"
    optimizer: str = "adam"
    lr: float = 0.1
    max_iterations: int = 2000
    schedule: str = "step"
    tolerance: float = 1e-8
    tv_weight: float = 1e-4
    signed: bool = True
    restarts: int = 2
    box: bool = True
    labels: str = "infer"


class InvertingGradients(GradientMatchingAttack):
    Options: ClassVar[type[MatchingOptions]] = IGOptions
