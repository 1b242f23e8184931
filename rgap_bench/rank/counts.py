"""Equation counts of one layer's R-GAP system, and a rank bound that explains the measured ranks.

Why not just `unknowns - gradient rows - weight rows`: that count ignores three exact linear dependencies,
and on CNN6-d it predicts full rank where the measured rank is 280 short. The bound here accounts for them:

1. Gradient rows separate per input channel (one shared matrix G_c per channel) and, with stride s, split further
   into s x s stride phases: tap (a, b) only reads pixels whose padded coordinates are congruent to (a, b) mod s.
   Per channel the gradient rank is at most sum over phases of min(C_out * taps in phase, pixels in phase).
2. Weight rows at one output position all read the same receptive field: at most C_in * |field| are independent.
3. For every filter pair (f, f'), sum_p k[f', p] * (weight row f at p) equals sum_{c,a,b} w[f, c, a, b] *
   (gradient row f', c, a, b): both are x -> <k_f', (w_f * x)>. That is min(C_out, C_in kh kw) * min(C_out, L)
   combinations of weight rows that already lie in the span of the gradient rows.

bound = min(read unknowns, C_in * gamma + weight_rank - dependencies), sharp (equal to the generic numerical
rank) when kernel >= stride along both axes and every stride phase has fewer taps than there are output positions
along that axis; otherwise it is an upper bound (polynomial syzygies among gradient rows lower the rank further).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisCounts:
    """One spatial axis of a convolution: what each stride phase and each output position sees."""

    out: int
    taps: dict[int, int]  # phase -> taps of that phase that read at least one interior pixel
    pixels: dict[int, int]  # phase -> interior pixels of that phase read by some tap
    field: list[int]  # per output position: interior pixels in its receptive field
    read: int  # interior pixels read at all


def axis_counts(size: int, kernel: int, stride: int, pad: int, pool: int = 1) -> AxisCounts:
    """`pool` > 1: only the output positions average pooling keeps (the first p * floor(out / p)) carry error."""
    out = (size + 2 * pad - kernel) // stride + 1
    out = out // pool * pool
    pos = stride * np.arange(out)[:, None] + np.arange(kernel)[None, :] - pad  # (out, kernel) interior coordinate
    inside = (pos >= 0) & (pos < size)
    taps: dict[int, int] = {}
    pixels: dict[int, set[int]] = {}
    for a in range(kernel):
        reads = pos[inside[:, a], a]
        if reads.size:
            taps[a % stride] = taps.get(a % stride, 0) + 1
            pixels.setdefault(a % stride, set()).update(reads.tolist())
    read = len(set(pos[inside].tolist()))
    return AxisCounts(out, taps, {r: len(p) for r, p in pixels.items()}, inside.sum(axis=1).tolist(), read)


@dataclass
class LayerCounts:
    """Counts of one layer's system (interior unknowns; padding folded in as known zeros)."""

    kind: str
    unknowns: int
    unknowns_padded: int
    padding_constraints: int
    gradient_constraints: int  # rows dL/dW: one per weight
    weight_constraints: int  # rows W x = z: one per output unit (pooled: one per pooled unit)
    naive_deficiency: int  # the paper's count: unknowns - gradient rows - weight rows (negative: surplus)
    gradient_rank_bound: int  # C_in * per-channel phase count (linear: unknowns)
    weight_rank_bound: int  # weight rows that can be independent (receptive-field limit)
    dependencies: int  # weight-row combinations inside the gradient rows' span
    read_unknowns: int  # unknowns read by at least one row
    bound: int  # predicted rank
    sharp: bool  # whether the bound is expected to equal the generic rank
    # one per output unit (linear) or channel (conv) of a layer with a bias: they fix the error dL/dz, not x, so
    # they are counted apart and never enter the bound
    bias_equations: int = 0

    @property
    def predicted_deficiency(self) -> int:
        return self.unknowns - self.bound

    @property
    def gradient_null(self) -> int:
        """Unknowns the gradient rows alone leave free: the weight rows must pin these down."""
        return max(self.read_unknowns - min(self.read_unknowns, self.gradient_rank_bound), 0)

    @property
    def weight_surplus(self) -> int:
        """Independent weight equations beyond what the gradient null space needs: room to absorb a deficit above."""
        return max(self.weight_rank_bound - self.dependencies - self.gradient_null, 0)

    def carried_rank(self, upper_null: int) -> int:
        """Rank bound when `upper_null` directions of this layer's output are undetermined (they cost weight rows)."""
        grad = min(self.read_unknowns, self.gradient_rank_bound)
        weight = max(self.weight_rank_bound - self.dependencies - upper_null, 0)
        return grad + min(self.gradient_null, weight)


def conv_counts(
    in_shape: tuple[int, int, int],
    out_channels: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    *,
    pool: int = 1,
    bias: bool = False,
) -> LayerCounts:
    """A conv's counts; with average pooling `pool` the gradient rows are the conv's (error on the kept positions)
    and the weight rows those of the equivalent conv with kernel k + s (p - 1) and stride s p (one per pooled
    unit). The dependency count (3. above) is derived for an unpooled conv only: a pooled conv's bound leaves it
    out, which keeps it an upper bound but not a sharp one (the piecewise-constant error P^T k adds dependencies
    among the gradient rows too); its numerical rank is the answer."""
    c, h, w = in_shape
    ah = axis_counts(h, kernel[0], stride[0], padding[0], pool)
    aw = axis_counts(w, kernel[1], stride[1], padding[1], pool)
    wh, ww = ah, aw
    if pool > 1:  # the weight rows' geometry: the pooled conv
        wh = axis_counts(h, kernel[0] + stride[0] * (pool - 1), stride[0] * pool, padding[0])
        ww = axis_counts(w, kernel[1] + stride[1] * (pool - 1), stride[1] * pool, padding[1])
    positions = wh.out * ww.out
    gamma = sum(
        min(out_channels * th * tw, ah.pixels[rh] * aw.pixels[rw])
        for rh, th in ah.taps.items()
        for rw, tw in aw.taps.items()
    )
    field = np.outer(wh.field, ww.field)
    weight_rank = int(np.minimum(out_channels, c * field).sum())
    deps = min(out_channels, c * kernel[0] * kernel[1]) * min(out_channels, positions) if pool == 1 else 0
    read = c * ah.read * aw.read
    n = c * h * w
    padded = c * (h + 2 * padding[0]) * (w + 2 * padding[1])
    grad_rows = out_channels * c * kernel[0] * kernel[1]
    weight_rows = out_channels * positions
    gradient_rank = c * gamma
    bound = min(read, gradient_rank + weight_rank - deps)
    no_gaps = kernel[0] >= stride[0] and kernel[1] >= stride[1] and pool == 1
    no_syzygy = max(ah.taps.values()) < ah.out and max(aw.taps.values()) < aw.out
    return LayerCounts(
        "conv", n, padded, padded - n, grad_rows, weight_rows, n - grad_rows - weight_rows,
        gradient_rank, weight_rank, deps, read, bound, no_gaps and no_syzygy, out_channels if bias else 0,
    )  # fmt: skip


def linear_counts(in_features: int, out_features: int, *, bias: bool = False) -> LayerCounts:
    """dL/dW = k x^T: any row with k_j != 0 is a scaled copy of x, so the gradient alone has full rank."""
    n = in_features
    deps = min(out_features, n)
    return LayerCounts(
        "linear", n, n, 0, out_features * n, out_features, n - out_features * n - out_features,
        n, min(out_features, n), deps, n, n, True, out_features if bias else 0,
    )  # fmt: skip
