"""`attack=idlg`: improved DLG (Zhao, Mopuri, Bilen; 2020).

The label is first recovered analytically from the output layer's gradient (`rgap_bench.attacks.labels`: the odd
sign out for cross-entropy; for the single-logit logistic loss both labels are candidates and the better gradient
match wins), then only the inputs are optimised as in DLG.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rgap_bench.attacks.gradient_matching import GradientMatchingAttack


class IDLG(GradientMatchingAttack):
    """The shared matching loop with this attack's published settings as defaults (the YAML repeats them)."""

    DEFAULTS: ClassVar[dict[str, Any]] = dict(
        name="idlg", distance="euclidean", optimizer="lbfgs", lr=1.0, max_iterations=1000, labels="infer"
    )

    def __init__(self, **settings: Any) -> None:
        super().__init__(**{**self.DEFAULTS, **settings})
