"""What a solver strategy is given and what it returns, so that strategies are interchangeable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from rgap_bench.attacks.rgap.layers import RGAPLayer
from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.plan import LayerPlan
from rgap_bench.linalg.operators import ConvSystem


@dataclass(frozen=True)
class LayerProblem:
    """One layer's equations as the recursion hands them over: tensors in the solve dtype, on the weights' device."""

    layer: RGAPLayer
    weight: Tensor
    k: Tensor  # dL/dz of this layer
    z: Tensor  # this layer's pre-activation, recovered from the layer above
    system: ConvSystem | None  # conv layers: the scaled system as a matrix-free operator (with `alive` applied)
    # a ReLU layer: the outputs (shaped like z) whose weight rows are kept; dead ones carry none. None keeps all
    alive: Tensor | None = None

    def live_weight_rows(self) -> tuple[Tensor, Tensor]:
        """A linear layer's weight rows W x = z restricted to the live outputs: (W, z)."""
        if self.alive is None:
            return self.weight, self.z
        keep = self.alive.reshape(-1)
        return self.weight[keep], self.z.reshape(-1)[keep]


@dataclass(frozen=True)
class LayerSolve:
    """One layer's solution and what the solve learnt about the system (None: not measured by this solver)."""

    x: Tensor  # the layer's input, shaped like layer.in_shape, in the solve dtype on the weights' device
    residual_rel: float  # ||A x - b|| / ||b|| of the scaled system
    solver: str  # the label in layers.json, e.g. "pcg-blockjacobi"
    rank: int | None = None
    sigma_min_rel: float | None = None  # smallest / largest singular value of the scaled system
    null_basis: Tensor | np.ndarray | None = None  # (n, n - rank) undetermined directions, when measured
    iterations: int | None = None  # iterative solvers only
    normal_residual_rel: float | None = None  # iterative solvers: where PCG stopped
    converged: bool | None = None  # iterative solvers: whether PCG reached its tolerance (None: a direct solve)
    # joint null-space solve only: the corrected input of the deficient layer above, and whether its LeakyReLU
    # pattern settled with a solution that fits every equation of both layers
    x_upper: Tensor | None = None
    pattern_settled: bool | None = None
    rank_method: str = ""  # how `rank` was measured, when not by the factorisation `solver` names
    joint_rank: int | None = None  # rank of the joint system (None: not measured, e.g. the pattern did not settle)
    joint_unknowns: int | None = None  # its unknowns: this layer's inputs + the free coefficients above
    note: str = ""


SolveFunction = Callable[[LayerProblem, LayerPlan, RGAPOptions], LayerSolve]
