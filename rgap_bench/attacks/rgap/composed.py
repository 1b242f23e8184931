"""A rank-deficient conv layer solved through the conv below it, without the deficient layer's null space.

The null-space route (`null_space.py`) needs an orthonormal basis N of the deficient layer's undetermined
directions: a dense eigendecomposition of its n x n normal matrix (31 s at 9216 unknowns, 1.4 GB at 13068) and then
a pattern search whose every step is a long PCG. Here the deficient (upper) layer's input is written through the
layer below instead, x_up = sigma(W x + b), and the upper layer's weight rows are composed with it: for a fixed
LeakyReLU pattern s, A_w (s * (W x + b)) = z_w is a sparse linear system in the lower layer's input x alone (a
3x3 conv under a 3x3 stride-2 conv couples pixels at most 4 apart), factorised on the host by SuperLU.

The pattern is searched in two phases:
1. A damped fixed point on x_up (up to 40 rounds, from every unit linear): the slopes read from the estimate, the
   system solved, the estimate moved half way to the solution's x_up. It settles most patterns on its own.
2. Otherwise the units that kept flipping are freed: their x_up entries become unknowns u of their own, so a
   wrong guess there cannot pull x astray. Each round solves for (x, u), reads the forward signs of the units still
   bound, and frees every bound unit whose sign flipped. Once none flips, a freed unit whose value u disagrees in
   sign with x's forward pass betrays a bound pattern that is self-consistent but wrong: the bound units nearest
   their kink (smallest |W x + b|) are freed next. The freed set only grows, so the search ends.
A unit within `KINK_TOL` of the kink has no sign a float32 gradient can tell, and x_up ~ 0 there either way: it
never counts as a flip. On a clean update, a settled pattern whose answer does not fit the gradient rows (which the
search does not read) is wrong: the 1% of units nearest their kink are freed and phase 2 runs again (2%, 4%).
On the 9216-unknown benchmark layer (1704 null directions) photos 0-9 all settle, in 14-20 rounds.

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
from rgap_bench.linalg.constraints import ConvGeometry, scaled_weight_rows, weight_row_matrix
from rgap_bench.linalg.operators import ConvSystem
from rgap_bench.linalg.sparse_spd import factor_spd

MAX_ROUNDS = 30  # freeing rounds before the search gives up (each frees at least one unit)
DAMPED_ROUNDS, DAMPING, FLIP_MEMORY = 40, 0.5, 6  # phase 1, and the rounds whose flips free a unit
RETRIES = 3  # a clean update's wrong settled pattern: free the units nearest their kink and search again
KINK_TOL = 1e-5  # |pre-activation| / max below which a unit's sign is undecided (float32 gradients: ~1e-7)


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
    return ComposedRows(sp.csc_matrix(scaled_weight_rows(upper)), lower, bias, _host(upper.z) * scale)


def sign_changes(pre: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Units whose pre-activation's sign differs from `negative`, among those clear of the kink: a unit within
    `KINK_TOL` of the largest |pre| has no sign a float32 gradient can tell (x_up ~ 0 there on either branch)."""
    return ((pre < 0) != negative) & (np.abs(pre) > KINK_TOL * np.abs(pre).max())


def damped_pattern(rows: ComposedRows, act: PiecewiseLinear) -> tuple[np.ndarray, np.ndarray, int]:
    """Phase 1: (slopes, the units that kept flipping, rounds); a fixed point on x_up, damped, from every unit
    linear. No unit left flipping: the slopes settled."""
    none = np.zeros(rows.lower.shape[0], dtype=bool)
    estimate = rows.forward(rows.solve(np.ones(none.shape), none)[0])
    history = []
    for _ in range(DAMPED_ROUNDS):
        slopes = np.where(estimate < 0, act.slope, 1.0)
        pre = rows.forward(rows.solve(slopes, none)[0])
        history.append(sign_changes(pre, slopes < 1))
        if not history[-1].any():
            return slopes, history[-1], len(history) + 1
        estimate = estimate + DAMPING * (slopes * pre - estimate)
    return np.where(estimate < 0, act.slope, 1.0), np.any(history[-FLIP_MEMORY:], axis=0), len(history) + 1


def freed_pattern(rows: ComposedRows, act: PiecewiseLinear, slopes: np.ndarray, free: np.ndarray,
                  max_rounds: int = MAX_ROUNDS) -> tuple[np.ndarray, int] | None:  # fmt: skip
    """Phase 2 from `slopes` with the units `free` unbound: (settled slopes, rounds), or None when the freed units
    outgrow the weight rows or the rounds run out."""
    free = free.copy()
    for rounds in range(1, max_rounds + 1):
        if rows.lower.shape[1] + int(free.sum()) > rows.upper.shape[0]:
            return None  # more unknowns than weight rows: the composed system cannot pin them down
        x, u, _ = rows.solve(slopes, free)
        pre = rows.forward(x)
        flipped = ~free & sign_changes(pre, slopes < 1)
        if flipped.any():
            free |= flipped
            continue
        # the bound units agree with x; a freed unit whose value disagrees in sign with x's forward pass means the
        # bound pattern is self-consistent but wrong somewhere: free the bound units nearest their kink
        u_negative = np.zeros_like(free)
        u_negative[free] = u < 0
        disagree = int((free & sign_changes(pre, u_negative)).sum())
        if not disagree:
            return np.where(pre < 0, act.slope, 1.0), rounds
        free |= nearest_kink(pre, free, 4 * disagree)
    return None


def nearest_kink(pre: np.ndarray, free: np.ndarray, count: int) -> np.ndarray:
    """The `count` bound units with the smallest |pre-activation|, as a mask."""
    bound = np.flatnonzero(~free)
    mask = np.zeros_like(free)
    mask[bound[np.argsort(np.abs(pre[bound]))[:count]]] = True
    return mask


def solve_composed(
    lower_weight: Tensor,
    lower_bias: Tensor | None,
    geom: ConvGeometry,
    act: PiecewiseLinear,
    upper: ConvSystem,
    lower_system: Callable[[Tensor], ConvSystem],
    rcond: float = 1e-10,
    clean: bool = False,
) -> JointSolution | None:
    """The lower layer's input and the deficient layer's input above it, jointly (None: the composed weight rows
    are exactly singular, or on a clean update the pattern search freed more units than they can pin down).

    `upper`: the deficient layer's scaled system (weight and gradient rows, over its input); `lower_system(slope)`:
    the lower layer's own `ConvSystem` (its gradient rows for the error that slope implies), for the final residual.
    `clean` (an update without noise): an answer that does not fit every equation settled on a wrong pattern that
    the weight rows alone cannot tell; the search then frees the units nearest their kink (1%, 2%, 4% of them) and
    goes on. Under noise phase 1's pattern stands where phase 2 cannot finish."""
    rows = composed_rows(lower_weight, lower_bias, geom, upper)
    try:
        slopes, free, rounds = damped_pattern(rows, act)
        for retry in range(RETRIES + 1):
            searched = freed_pattern(rows, act, slopes, free) if free.any() else (slopes, 0)
            if searched is None and clean:
                return None
            slopes, more = searched or (slopes, 0)  # noise: phase 1's pattern is the best there is
            rounds += more
            solution = _bound_solution(rows, act, slopes, upper, lower_system, geom, rcond)
            solution.iterations = rounds
            if not clean or solution.consistent or retry == RETRIES:
                return solution
            pre = rows.forward(solution.x_lower.cpu().numpy())
            free = nearest_kink(pre, np.zeros_like(free), int(0.01 * 2**retry * free.size))
    except RuntimeError:  # SuperLU: exactly singular (the weight rows alone leave directions open)
        return None


def _bound_solution(rows: ComposedRows, act: PiecewiseLinear, slopes: np.ndarray, upper: ConvSystem,
                    lower_system: Callable[[Tensor], ConvSystem], geom: ConvGeometry,
                    rcond: float) -> JointSolution:  # fmt: skip
    """Every unit bound to `slopes`: the lower input, its forward pass, the full residual and the proof."""
    x, _, proven = rows.solve(slopes, np.zeros_like(slopes, dtype=bool), rcond)
    flips = int(sign_changes(rows.forward(x), slopes < 1).sum())  # binding the freed units can still move x
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
        0,
        flips,
        unknowns=n,
        rank=n if proven and not flips else None,
    )


def _host(t: Tensor) -> np.ndarray:
    return t.detach().double().cpu().reshape(-1).numpy()
