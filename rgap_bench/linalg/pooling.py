"""Average pooling after a conv (kernel = stride = p) as the fixed linear map it is.

A pooled block computes z = P(conv(x, W) + b) = P conv(x, W) + b, with P the p x p average. Two facts let every
solver treat it without a new kind of equation:

* Weight rows: P conv(x, W) is itself a convolution of the padded input, with the filter W_eff = (1/p^2) sum over
  the p x p shifts of W by multiples of the conv's stride (kernel k + s (p - 1), stride s p, same padding). Its
  output is exactly P's floor-sized output, so the pooled weight rows are plain conv rows `W_eff x = z - b`.
* Gradient rows: dL/dW = corr(x, k_full) with the full-resolution error k_full = P^T k (each pooled error spread
  over its p x p window, divided by p^2; zero on the rows and columns the floor drops). The gradient rows are the
  conv's own, with k_full in place of k.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from rgap_bench.linalg.constraints import ConvGeometry


def pooled_geometry(geom: ConvGeometry, pool: int) -> ConvGeometry:
    """Geometry of the pooled weight rows: the conv with kernel k + s (p - 1) and stride s p."""
    if pool == 1:
        return geom
    (kh, kw), (sh, sw) = geom.kernel, geom.stride
    return ConvGeometry(
        geom.in_shape, (kh + sh * (pool - 1), kw + sw * (pool - 1)), (sh * pool, sw * pool), geom.padding
    )


def pooled_filters(weight: Tensor, stride: tuple[int, int], pool: int) -> Tensor:
    """W_eff (F, C, kh + sh (p-1), kw + sw (p-1)): conv with it at stride s p equals avgpool_p(conv(., W))."""
    if pool == 1:
        return weight
    (sh, sw), (kh, kw) = stride, weight.shape[-2:]
    out = weight.new_zeros((*weight.shape[:2], kh + sh * (pool - 1), kw + sw * (pool - 1)))
    for a in range(pool):
        for b in range(pool):
            out[:, :, sh * a : sh * a + kh, sw * b : sw * b + kw] += weight
    return out / pool**2


def upsample_error(k: Tensor, full_hw: tuple[int, int], pool: int) -> Tensor:
    """k_full = P^T k: the conv output's error from the pooled one (..., Hp, Wp) -> (..., Ho, Wo)."""
    if pool == 1:
        return k
    full = k.repeat_interleave(pool, dim=-2).repeat_interleave(pool, dim=-1) / pool**2
    return F.pad(full, (0, full_hw[1] - full.shape[-1], 0, full_hw[0] - full.shape[-2]))
