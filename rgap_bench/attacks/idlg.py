"""`attack=idlg`: improved DLG (Zhao, Mopuri, Bilen; 2020).

The label is first recovered analytically from the output layer's gradient (`rgap_bench.attacks.labels`: the odd
sign out for cross-entropy; for the single-logit logistic loss both labels are candidates and the better gradient
match wins), then only the inputs are optimised as in DLG.
"""

from __future__ import annotations

from rgap_bench.attacks.gradient_matching import GradientMatchingAttack


class IDLG(GradientMatchingAttack):
    def __init__(
        self,
        name: str = "idlg",
        distance: str = "euclidean",
        optimizer: str = "lbfgs",
        lr: float = 1.0,
        max_iterations: int = 1000,
        schedule: str = "none",
        tolerance: float = 1e-10,
        tv_weight: float = 0.0,
        signed: bool = False,
        restarts: int = 1,
        box: bool = False,
        labels: str = "infer",
        init: str = "uniform",
        seed: int = 0,
        dtype: str = "float32",
        progress: bool = True,
    ) -> None:
        super().__init__(
            name, distance, optimizer, lr, max_iterations, schedule, tolerance, tv_weight, signed, restarts, box,
            labels, init, seed, dtype, progress,
        )  # fmt: skip
