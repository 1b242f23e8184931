"""`attack=dlg`: Deep Leakage from Gradients (Zhu, Liu, Han; NeurIPS 2019).

Dummy inputs and, when the labels are not shared, a dummy soft label, optimised jointly with L-BFGS to minimise
the squared Euclidean distance between their gradient and the shared one. No image prior, no box constraint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rgap_bench.attacks.gradient_matching import GradientMatchingAttack, MatchingOptions


@dataclass
class DLGOptions(MatchingOptions):
    """DLG's published settings are the matching loop's defaults; only the name differs."""

    name: str = "dlg"


class DLG(GradientMatchingAttack):
    Options: ClassVar[type[MatchingOptions]] = DLGOptions
