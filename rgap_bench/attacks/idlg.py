"""`attack=idlg`: improved DLG (Zhao, Mopuri, Bilen; 2020).

The label is first recovered analytically from the output layer's gradient (`rgap_bench.attacks.labels`: the odd
sign out for cross-entropy; for the single-logit logistic loss both labels are candidates and the better gradient
match wins), then only the inputs are optimised as in DLG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rgap_bench.attacks.gradient_matching import GradientMatchingAttack, MatchingOptions


@dataclass
class IDLGOptions(MatchingOptions):
    """DLG's settings with analytic labels."""

    name: str = "idlg"
    labels: str = "infer"


class IDLG(GradientMatchingAttack):
    Options: ClassVar[type[MatchingOptions]] = IDLGOptions
