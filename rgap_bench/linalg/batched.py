"""A conv layer's normal operator and block-Jacobi preconditioner applied to a block of vectors at once.

The rank probe (`rgap_bench.linalg.krylov`) runs PCG on several columns at once; one batched product serves them
all. Built only from the public pieces of `ConvSystem` and `BlockJacobi` (the gradient rows' error k_full or the
cached K^T K, the weight rows' conv row_weight / row_geom, the row scales with any dead-unit mask, K and the block
inverses), so it follows them (pooling and ReLU masks included); tests check it against `ConvSystem.normal` column
by column.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from rgap_bench.linalg.operators import BlockJacobi, ConvSystem, symmetric_bmm

BlockOperator = Callable[[Tensor], Tensor]  # (n, m) columns -> (n, m) columns


def block_normal(system: ConvSystem) -> BlockOperator:
    """X (n, m) -> A^T A X, with n = C*H*W flattened as `system.shape`."""
    c, h, w = system.shape
    geom = system.geom
    k = system.k_full[None]  # the gradient rows' error (pooled layers: P^T k at full resolution)
    rows_w, rows_g = system.row_weight, system.row_geom  # the weight rows' conv (pooled layers: the combined filter)
    weight_scale = system.weight_scale if system.z is not None else None
    grad_scale = system.grad_scale.reshape(-1, 1, *geom.kernel)  # (F, 1, kh, kw): the same for every channel
    gram = system.channel_gram()  # tall K: every (column, channel) image meets the same K^T K

    def apply(x: Tensor) -> Tensor:
        m = x.shape[1]
        batch = x.T.reshape(m, c, h, w)
        if gram is not None:
            out = (batch.reshape(m * c, h * w) @ gram).reshape(m, c, h, w)
        else:
            # every (column, channel) image is one channel of a single sample, so one conv2d_weight gives every
            # column's rows (F, m*c, kh, kw), and one conv2d_input their adjoint
            channels = (1, m * c, h, w)
            rows = torch.nn.grad.conv2d_weight(
                batch.reshape(channels), (k.shape[1], m * c, *geom.kernel), k, stride=geom.stride, padding=geom.padding
            )
            out = torch.nn.grad.conv2d_input(
                channels, rows * grad_scale**2, k, stride=geom.stride, padding=geom.padding
            ).reshape(m, c, h, w)
        if weight_scale is not None:
            y = F.conv2d(batch, rows_w, stride=rows_g.stride, padding=rows_g.padding) * weight_scale**2
            out = out + torch.nn.grad.conv2d_input(
                (m, c, h, w), rows_w, y, stride=rows_g.stride, padding=rows_g.padding
            )
        return out.reshape(m, -1).T

    return apply


def block_preconditioner(pre: BlockJacobi) -> BlockOperator:
    """X (n, m) -> the block-Jacobi inverse applied to every column."""
    c, h, w = pre.shape

    def apply(x: Tensor) -> Tensor:
        # columns as rows (m, C, n): every product below has the skinny side on the left, which torch's CPU kernels
        # run several times faster than the same product with a few right-hand columns
        m = x.shape[1]
        rows = x.T.reshape(m, c, h * w)
        if pre.mode == "direct":
            out = symmetric_bmm(pre.inverse, rows.transpose(0, 1)).transpose(0, 1)
        else:
            dr = pre.inv * rows  # (m, C, n)
            u = (dr.reshape(m * c, h * w) @ pre.kmat.T).reshape(m, c, -1)
            t = symmetric_bmm(pre.inverse, u.transpose(0, 1)).transpose(0, 1)  # (m, C, k)
            out = dr - pre.inv * (t.reshape(m * c, -1) @ pre.kmat).reshape(m, c, h * w)
        return out.reshape(m, -1).T

    return apply
