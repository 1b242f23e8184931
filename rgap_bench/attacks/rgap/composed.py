"""A rank-deficient conv layer solved through the conv below it, without the deficient layer's null space.

The null-space route (`null_space.py`) needs an orthonormal basis N of the deficient layer's undetermined
directions: a dense eigendecomposition of its n x n normal matrix (31 s at 9216 unknowns, 1.4 GB at 13068) and then
a pattern search whose every step is a long PCG. Here the deficient (upper) layer's input is written through the
layer below instead, x_up = sigma(W x + b), and the upper layer's weight rows are composed with it: for a fixed
LeakyReLU pattern s, A_w (s * (W x + b)) = z_w is a sparse linear system in the lower layer's input x alone (a
3x3 conv under a 3x3 stride-2 conv couples pixels at most 4 apart), factorised on the host by SuperLU.

The pattern is searched in two phases:
1. Two plain rounds: every unit linear (s = 1), then s read from the forward pass of that solution.
2. The units whose sign changed between them are freed: their x_up entries become unknowns u of their own, so a
   wrong guess there cannot pull x astray. Each round then solves for (x, u), reads the forward signs of the
   units still bound, and frees every bound unit whose sign flipped, until none does. The freed set only grows,
   so the search ends; on the 9216-unknown benchmark layer (1704 null directions) it settles in 4-6 rounds.

The settled pattern is then solved with every unit bound; a factorisation of the shifted normal matrix whose
pivots are all positive proves that system full rank (`linalg.sparse_spd`): the lower input, and through it the
deficient layer's input, is unique within the pattern's activation cell. Adding the gradient rows of both layers
cannot lower that rank, so the proof covers the joint system of every equation, which the residual then checks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from rgap_bench.attacks.rgap.null_space import JointSolution
from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.constraints import ConvGeometry, weight_row_matrix
from rgap_bench.linalg.operators import ConvSystem
from rgap_bench.linalg.sparse_spd import factor_spd

MAX_ROUNDS = 30  # freeing rounds before the search gives up (each frees at least one unit)


@dataclass
class ComposedRows:
    """The deficient layer's scaled weight rows A_w (m, n_up) composed with the lower conv W (n_up, n) and its
    bias, in float64 on the host."""

    upper: sp.csc_matrix  # A_w: the upper layer's scaled weight rows over its input
    lower: sp.csr_matrix  # W: the lower conv over its interior input
    bias: np.ndarray  # (n_up,) the lower conv's bias per output unit (zeros without one)
    target: np.ndarray  # (m,) the upper layer's scaled right-hand side z_w

    def solve(self, slope: np.ndarray, free: np.ndarray, rcond: float = 0.0) -> tuple[np.ndarray, np.ndarray, bool]:
        """(x, u, proven): least squares over the lower input x and the free units' values u, for the bound
        units' slopes; `proven` is the full-rank certificate at rcond (False when rcond is 0)."""
        bound = np.where(free, 0.0, slope)
        columns = self.upper @ sp.diags(bound) @ self.lower
        if free.any():
            columns = sp.hstack([columns, self.upper[:, np.flatnonzero(free)]])
        columns = sp.csc_matrix(columns)
        rhs = self.target - self.upper @ (bound * self.bias)
        factor = factor_spd(columns.T @ columns, rcond)
        solution = factor.solve(columns.T @ rhs)
        n = self.lower.shape[1]
        return solution[:n], solution[n:], factor.proven

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The lower conv's pre-activation W x + b."""
        return self.lower @ x + self.bias


def composed_rows(
    lower_weight: Tensor, lower_bias: Tensor | None, geom: ConvGeometry, upper: ConvSystem
) -> ComposedRows:
    """The sparse pieces of the composed system, from the lower conv and the upper layer's scaled system."""
    lower = weight_row_matrix(lower_weight, geom)
    per_unit = lower.shape[0] // lower_weight.shape[0]
    bias = np.zeros(lower.shape[0]) if lower_bias is None else np.repeat(_host(lower_bias), per_unit)
    scale = _host(upper.weight_scale)
    rows = sp.diags(scale) @ weight_row_matrix(upper.row_weight, upper.row_geom)
    return ComposedRows(sp.csc_matrix(rows), lower, bias, _host(upper.z) * scale)


def search_pattern(
    rows: ComposedRows, act: PiecewiseLinear, max_rounds: int = MAX_ROUNDS
) -> tuple[np.ndarray, int, int]:
    """The settled slopes (one per upper input unit), the rounds taken and the flips left in the last round
    (0: settled)."""
    slopes = np.ones(rows.lower.shape[0])
    none = np.zeros_like(slopes, dtype=bool)
    first = rows.forward(rows.solve(slopes, none)[0]) < 0
    slopes = np.where(first, act.slope, 1.0)
    second = rows.forward(rows.solve(slopes, none)[0]) < 0
    free = first != second
    slopes = np.where(second, act.slope, 1.0)
    rounds, flips = 2, 0
    for _ in range(max_rounds):
        if rows.lower.shape[1] + int(free.sum()) > rows.upper.shape[0]:
            return None  # more unknowns than weight rows: the composed system cannot pin them down
        rounds += 1
        x, _, _ = rows.solve(slopes, free)
        negative = rows.forward(x) < 0
        flipped = ~free & (negative != (slopes < 1))
        flips = int(flipped.sum())
        if not flips:
            return np.where(negative, act.slope, 1.0), rounds, 0
        free |= flipped
    return np.where(rows.forward(x) < 0, act.slope, 1.0), rounds, flips


def solve_composed(
    lower_weight: Tensor,
    lower_bias: Tensor | None,
    geom: ConvGeometry,
    act: PiecewiseLinear,
    upper: ConvSystem,
    lower_system: Callable[[Tensor], ConvSystem],
    rcond: float = 1e-10,
) -> JointSolution | None:
    """The lower layer's input and the deficient layer's input above it, jointly (None: the composed weight rows
    are exactly singular, or the pattern search freed more units than they can pin down). `upper`: the deficient layer's
    scaled system (weight and gradient rows, over its input); `lower_system(slope)`: the lower layer's own
    `ConvSystem` (its gradient rows for the error that slope implies), for the final residual."""
    rows = composed_rows(lower_weight, lower_bias, geom, upper)
    try:
        searched = search_pattern(rows, act)
        if searched is None:
            return None
        slopes, rounds, flips = searched
        x, _, proven = rows.solve(slopes, np.zeros_like(slopes, dtype=bool), rcond)
    except RuntimeError:  # SuperLU: exactly singular (the weight rows alone leave directions open)
        return None
    like = {"dtype": torch.float64, "device": upper.weight.device}
    x_lower = torch.as_tensor(x, **like)
    pre = torch.as_tensor(rows.forward(x), **like)
    x_upper = torch.where(pre < 0, act.slope * pre, pre)
    # every equation of both layers: the lower's gradient rows (its weight rows hold by construction) and the
    # upper's whole system at x_up
    lower = lower_system(torch.as_tensor(slopes, **like).reshape(upper.geom.in_shape))
    parts = [lower.residual_norms2(x_lower.reshape(geom.in_shape)), upper.residual_norms2(x_upper.reshape(upper.shape))]
    residual, reference = (sum(p[i] for p in parts) for i in (0, 1))
    n = x.size
    return JointSolution(
        x_lower,
        x_upper,
        (residual / reference) ** 0.5 if reference > 0 else residual**0.5,
        rounds,
        flips,
        unknowns=n,
        rank=n if proven and not flips else None,
    )


def _host(t: Tensor) -> np.ndarray:
    return t.detach().double().cpu().reshape(-1).numpy()
