"""Sparse constraint matrices of one layer, built by index arithmetic (no loops over entries).

For a layer z = W x with back-propagated error k = dl/dz, the shared weight gradient is a linear function of the
layer input x (gradient constraints) and so is the layer output (weight constraints). Padding is folded in: the
unknowns are the interior pixels only, which imposes `x_pad = 0` exactly instead of as extra rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class ConstraintBlock:
    """Rows `matrix @ x = rhs` of one kind ("gradient" or "weight")."""

    kind: str
    matrix: sp.csr_matrix
    rhs: np.ndarray


@dataclass(frozen=True)
class ConvGeometry:
    in_shape: tuple[int, int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]

    @property
    def out_hw(self) -> tuple[int, int]:
        _, h, w = self.in_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    @property
    def padded_unknowns(self) -> int:
        c, h, w = self.in_shape
        return c * (h + 2 * self.padding[0]) * (w + 2 * self.padding[1])


def conv_adjoint(weight: Tensor, out: Tensor, geom: ConvGeometry) -> Tensor:
    """conv2d's adjoint on a (B, F, Ho, Wo) batch, back to geom's (B, C, H, W) input: conv_transpose2d with the
    output padding that restores the input size a strided conv rounded away."""
    (sh, sw), (ph, pw), (kh, kw) = geom.stride, geom.padding, geom.kernel
    oh, ow = out.shape[-2:]
    extra = (geom.in_shape[1] - (oh - 1) * sh + 2 * ph - kh, geom.in_shape[2] - (ow - 1) * sw + 2 * pw - kw)
    return F.conv_transpose2d(out, weight, stride=geom.stride, padding=geom.padding, output_padding=extra)


def conv_patch_index(geom: ConvGeometry) -> Tensor:
    """(C*kh*kw, L) flat interior index read by each kernel tap at each output position; -1 marks padding."""
    c, h, w = geom.in_shape
    ph, pw = geom.padding
    ids = torch.arange(c * h * w, dtype=torch.float64).view(1, c, h, w)
    ids = F.pad(ids, (pw, pw, ph, ph), value=-1.0)
    return F.unfold(ids, geom.kernel, stride=geom.stride)[0].round().long()


def _coo(rows: Tensor, cols: Tensor, vals: Tensor, shape: tuple[int, int]) -> sp.csr_matrix:
    keep = cols >= 0
    return sp.csr_matrix((vals[keep].numpy(), (rows[keep].numpy(), cols[keep].numpy())), shape=shape, dtype=np.float64)


def conv_constraints(
    weight: Tensor, weight_grad: Tensor, k: Tensor, z: Tensor | None, geom: ConvGeometry
) -> list[ConstraintBlock]:
    """Gradient rows dL/dW[f,c,a,b] = sum_p k[f,p] x[c, s*p+(a,b)] and weight rows conv(x) = z."""
    n = int(np.prod(geom.in_shape))
    idx = conv_patch_index(geom)  # (CKK, L)
    ckk, positions = idx.shape
    filters = weight.shape[0]
    k_flat = k.reshape(filters, positions).double()
    taps = torch.arange(ckk)
    grad_rows = (torch.arange(filters)[:, None, None] * ckk + taps[None, :, None]).expand(-1, -1, positions)
    grad_vals = k_flat[:, None, :].expand(-1, ckk, -1)
    cols = idx[None].expand(filters, -1, -1)
    blocks = [
        ConstraintBlock(
            "gradient",
            _coo(grad_rows.reshape(-1), cols.reshape(-1), grad_vals.reshape(-1), (filters * ckk, n)),
            weight_grad.reshape(-1).double().numpy(),
        )
    ]
    if z is not None:
        blocks.append(ConstraintBlock("weight", weight_row_matrix(weight, geom, idx), z.reshape(-1).double().numpy()))
    return blocks


def weight_row_matrix(weight: Tensor, geom: ConvGeometry, idx: Tensor | None = None) -> sp.csr_matrix:
    """The conv x -> conv(x, weight) on the interior input (padding folded in as zeros) as a sparse
    (F * L, C * H * W) matrix, in float64 on the host: one row per output unit, in conv2d's output order."""
    idx = conv_patch_index(geom) if idx is None else idx  # (CKK, L)
    ckk, positions = idx.shape
    filters = weight.shape[0]
    rows = (torch.arange(filters)[:, None, None] * positions + torch.arange(positions)[None, None, :]).expand(
        -1, ckk, -1
    )
    vals = weight.detach().reshape(filters, ckk).double().cpu()[:, :, None].expand(-1, -1, positions)
    cols = idx[None].expand(filters, -1, -1)
    n = int(np.prod(geom.in_shape))
    return _coo(rows.reshape(-1), cols.reshape(-1), vals.reshape(-1), (filters * positions, n))


def scaled_weight_rows(system) -> sp.csr_matrix:
    """A conv layer system's (`operators.ConvSystem`) scaled weight rows D_w W as a sparse host matrix, its pooling
    folded into the row weights: what the sparse and banded factorisations of the weight part start from."""
    scale = system.weight_scale.detach().reshape(-1).double().cpu().numpy()
    return (sp.diags(scale) @ weight_row_matrix(system.row_weight.cpu(), system.row_geom)).tocsr()


def linear_constraints(weight: Tensor, weight_grad: Tensor, k: Tensor, z: Tensor | None) -> list[ConstraintBlock]:
    """Gradient rows dL/dW[j,i] = k[j] x[i] (only rows with k[j] != 0 carry information) and rows W x = z."""
    n = weight.shape[1]
    k = k.reshape(-1).double()
    active = torch.nonzero(k).reshape(-1)
    rows = torch.arange(active.numel() * n)
    cols = torch.arange(n).repeat(active.numel())
    vals = k[active].repeat_interleave(n)
    grad = sp.csr_matrix((vals.numpy(), (rows.numpy(), cols.numpy())), shape=(active.numel() * n, n))
    blocks = [ConstraintBlock("gradient", grad, weight_grad[active].reshape(-1).double().numpy())]
    if z is not None:
        blocks.append(ConstraintBlock("weight", sp.csr_matrix(weight.double().numpy()), z.reshape(-1).double().numpy()))
    return blocks
