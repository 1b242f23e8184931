"""`attack=dlg`: Deep Leakage from Gradients (Zhu, Liu, Han; NeurIPS 2019).

Dummy inputs and, when the labels are not shared, a dummy soft label, optimised jointly with L-BFGS to minimise
the squared Euclidean distance between their gradient and the shared one. No image prior, no box constraint.
"""

from __future__ import annotations

from rgap_bench.attacks.gradient_matching import GradientMatchingAttack


class DLG(GradientMatchingAttack):
    def __init__(
        self,
        name: str = "dlg",
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
        labels: str = "optimise",
        init: str = "uniform",
        seed: int = 0,
        dtype: str = "float32",
        progress: bool = True,
    ) -> None:
        super().__init__(
            name, distance, optimizer, lr, max_iterations, schedule, tolerance, tv_weight, signed, restarts, box,
            labels, init, seed, dtype, progress,
        )  # fmt: skip
