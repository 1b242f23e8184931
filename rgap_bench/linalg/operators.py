"""Matrix-free layer systems: the scaled gradient and weight constraints of one layer as torch operators.

For a conv layer the unknown is the interior input x (C, H, W). The gradient rows are x -> corr(x, k) (one per
kernel entry), the weight rows x -> conv(x, W); both and their adjoints are convolutions, so nothing of size
(equations x unknowns) is ever formed. Every row is scaled to unit norm, as in the explicit path.

The gradient rows of a conv separate per input channel and share one small matrix K (C_out*kh*kw x H*W), so
I_C (x) K^T K is block diagonal with identical blocks; together with the exact diagonal of the weight part it makes
a block-Jacobi preconditioner whose blocks are solved exactly (directly, or through Woodbury when K is wide).

A conv followed by average pooling (`pool` > 1) keeps both kinds of rows: the gradient rows use the full-resolution
error P^T k, the weight rows are the equivalent strided conv (`rgap_bench.linalg.pooling`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from rgap_bench.linalg.constraints import ConvGeometry, conv_adjoint, conv_patch_index
from rgap_bench.linalg.pooling import pooled_filters, pooled_geometry, upsample_error
from rgap_bench.linalg.precision import compact_dtype
from rgap_bench.linalg.symbol import full_conv_solve, symbol_sigma_bounds


def _inverse_norm(norm2: Tensor) -> Tensor:
    return torch.where(norm2 > 0, norm2.clamp_min(1e-300).rsqrt(), torch.zeros_like(norm2))


@dataclass
class ConvSystem:
    """Scaled least-squares system [D_g G; D_w W] x = [D_g vec(dL/dW); D_w z] of one bias-free conv layer
    (`pool` > 1: k and z are the pooled error and pre-activation, (F, Ho/p, Wo/p))."""

    weight: Tensor  # (F, C, kh, kw)
    k: Tensor  # (F, Ho, Wo): dL/dz of this layer
    grad: Tensor  # (F, C, kh, kw): the shared weight gradient
    z: Tensor | None  # (F, Ho, Wo): pre-activation recovered from the layer above
    geom: ConvGeometry
    scale_rows: bool = True
    pool: int = 1  # average pooling (kernel = stride) between the conv and the activation
    # (F, Ho, Wo) bool (pooled outputs when pooled): outputs whose weight rows are kept; ReLU's dead units have none
    alive: Tensor | None = None
    grad_scale: Tensor = field(init=False)
    weight_scale: Tensor = field(init=False)
    _kmat: Tensor | None = field(init=False, default=None, repr=False)
    _gram: Tensor | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.k_full = upsample_error(self.k, self.geom.out_hw, self.pool)  # the gradient rows' error, P^T k
        self.row_weight = pooled_filters(self.weight, self.geom.stride, self.pool)  # the weight rows' conv
        self.row_geom = pooled_geometry(self.geom, self.pool)
        c, h, w = self.geom.in_shape
        ones = torch.ones((1, 1, h, w), dtype=self.weight.dtype, device=self.weight.device)
        if self.scale_rows:
            kk = (self.weight.shape[0], 1, *self.geom.kernel)
            g2 = self._weight_grad(ones, (self.k_full**2)[None], kk)  # (F, 1, kh, kw): independent of the channel
            self.grad_scale = _inverse_norm(g2)
            rg = self.row_geom
            w2 = F.conv2d(ones.expand(1, c, h, w), self.row_weight**2, stride=rg.stride, padding=rg.padding)
            self.weight_scale = _inverse_norm(w2[0])
        else:
            self.grad_scale = torch.ones_like(self.weight[:, :1])
            self.weight_scale = torch.ones_like(self.k)
        if self.alive is not None:  # a dropped row is a zero row: every product below honours it
            self.weight_scale = self.weight_scale * self.alive.to(self.weight_scale.dtype)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geom.in_shape

    def _weight_grad(self, x: Tensor, k: Tensor, size: tuple[int, ...]) -> Tensor:
        return torch.nn.grad.conv2d_weight(x, size, k, stride=self.geom.stride, padding=self.geom.padding)

    def _input_grad(self, weight: Tensor, out: Tensor, geom: ConvGeometry | None = None) -> Tensor:
        """conv2d's adjoint, as conv_transpose2d: the same kernel, bitwise, without conv2d_input's argument parsing
        (~10 us of ~40 per call on CNN6's conv1 and conv2, which PCG makes hundreds of)."""
        return conv_adjoint(weight, out, geom or self.geom)[0]

    def grad_rows(self, x: Tensor) -> Tensor:
        return self._weight_grad(x[None], self.k_full[None], self.weight.shape) * self.grad_scale

    def grad_rows_adjoint(self, v: Tensor) -> Tensor:
        return self._input_grad(v * self.grad_scale, self.k_full[None])

    def weight_rows(self, x: Tensor) -> Tensor:
        rg = self.row_geom
        return F.conv2d(x[None], self.row_weight, stride=rg.stride, padding=rg.padding)[0] * self.weight_scale

    def weight_rows_adjoint(self, y: Tensor) -> Tensor:
        return self._input_grad(self.row_weight, (y * self.weight_scale)[None], self.row_geom)

    def channel_gram(self) -> Tensor | None:
        """K^T K (H*W, H*W), cached, when K is tall: then the gradient rows' normal part I (x) K^T K is one dense
        product per application, ~1.5x faster than conv2d_weight and its adjoint on CNN6's conv2; None when K is
        wide (the n x n product would cost more than the convolutions)."""
        kmat = self.channel_matrix()
        if kmat.shape[1] > kmat.shape[0]:
            return None
        if self._gram is None:
            self._gram = kmat.T @ kmat
        return self._gram

    def normal(self, x: Tensor) -> Tensor:
        c, h, w = self.geom.in_shape
        gram = self.channel_gram()
        if gram is not None:
            out = (x.reshape(c, h * w) @ gram).reshape(c, h, w)
        else:
            out = self.grad_rows_adjoint(self.grad_rows(x))
        if self.z is not None:
            out = out + self.weight_rows_adjoint(self.weight_rows(x))
        return out

    def normal_rhs(self) -> Tensor:
        out = self.grad_rows_adjoint(self.grad * self.grad_scale)
        if self.z is not None:
            out = out + self.weight_rows_adjoint(self.z * self.weight_scale)
        return out

    def residual_norms2(self, x: Tensor) -> tuple[float, float]:
        """(||A x - b||^2, ||b||^2) of the scaled system."""
        parts = [(self.grad_rows(x), self.grad * self.grad_scale)]
        if self.z is not None:
            parts.append((self.weight_rows(x), self.z * self.weight_scale))
        return sum(float(((a - b) ** 2).sum()) for a, b in parts), sum(float((b**2).sum()) for _, b in parts)

    def residual_rel(self, x: Tensor) -> float:
        res, ref = self.residual_norms2(x)
        return (res / ref) ** 0.5 if ref > 0 else res**0.5

    def channel_matrix(self) -> Tensor:
        """The shared per-channel gradient matrix K (F*kh*kw, H*W), row-scaled, built once by index arithmetic
        (cached: the plan's bound, the preconditioner and every normal product use it)."""
        if self._kmat is None:
            self._kmat = self._build_channel_matrix()
        return self._kmat

    def _build_channel_matrix(self) -> Tensor:
        _, h, w = self.geom.in_shape
        geom1 = ConvGeometry((1, h, w), self.geom.kernel, self.geom.stride, self.geom.padding)
        idx = conv_patch_index(geom1).to(self.k.device)  # (kh*kw, L)
        taps, positions = idx.shape
        filters = self.weight.shape[0]
        values = self.k_full.reshape(filters, 1, positions) * self.grad_scale.reshape(filters, taps, 1)
        rows = torch.arange(filters * taps, device=idx.device).reshape(filters, taps, 1).expand(-1, -1, positions)
        cols = idx[None].expand(filters, -1, -1)
        valid = cols >= 0
        dense = torch.zeros(filters * taps, h * w, dtype=self.k.dtype, device=self.k.device)
        # a (filter, tap) row meets a pixel at most once (the tap fixes the output position), so no accumulation
        dense.index_put_((rows[valid], cols[valid]), values.expand(-1, taps, -1)[valid])
        return dense

    def dense_normal(self) -> Tensor:
        """The scaled normal matrix A^T A as a dense (n, n) tensor on the system's device, by index arithmetic:
        I_C (x) K^T K for the gradient rows plus one (C kh kw)^2 patch block per output position for the weight
        rows. For the rank and the null space of layers small enough to factorise densely.

        A weight row's scale is the norm of its filter over the taps that fall inside the image, so output
        positions with the same padding pattern share one block: only a few distinct blocks are multiplied out
        (9 for a 3x3 kernel with padding 1) instead of one per position. With `alive` the filters kept at a
        position are part of its pattern (up to one block per position)."""
        c, h, w = self.geom.in_shape
        n = c * h * w
        kmat = self.channel_matrix()
        gram = torch.block_diag(*([kmat.T @ kmat] * c))
        if self.z is None:
            return gram
        filters = self.weight.shape[0]
        rows = conv_patch_index(self.row_geom).to(self.k.device).T  # (L, P): P = C*kh*kw unknowns per position
        valid = rows >= 0
        wflat = self.row_weight.reshape(filters, -1)  # (F, P)
        s2 = (self.weight_scale**2).reshape(filters, -1)  # (F, L)
        taps_per_position = valid.shape[1]
        key = valid if self.alive is None else torch.cat([valid, self.alive.reshape(filters, -1).T], dim=1)
        patterns, which = torch.unique(key, dim=0, return_inverse=True)
        flat_gram = gram.view(-1)
        for u, pattern in enumerate(patterns[:, :taps_per_position]):
            positions = torch.nonzero(which == u)[:, 0]
            taps = wflat[:, pattern]  # (F, P_valid)
            block = (taps.T * s2[:, positions[0]]) @ taps  # the scale (and mask) is shared by the pattern's positions
            idx = rows[positions][:, pattern]  # (L_u, P_valid)
            flat = (idx[:, :, None] * n + idx[:, None, :]).reshape(-1)
            flat_gram.index_add_(0, flat, block.expand(len(positions), -1, -1).reshape(-1))
        return gram

    def full_rank_bound(self, max_pixels: int = 1024) -> float | None:
        """A lower bound on lambda_min / lambda_max of the normal matrix from the gradient rows alone, or None.

        A^T A = I_C (x) K^T K + (weight part, PSD), so lambda_min(A^T A) >= lambda_min(K^T K), and lambda_max is at
        most the trace. When K (F*kh*kw x H*W) has full column rank this proves the layer full rank from one
        H*W x H*W eigenvalue problem, instead of factorising the dense (C*H*W)^2 normal matrix. None when K is
        wide (the gradient rows alone cannot determine a channel) or H*W exceeds `max_pixels`."""
        c, h, w = self.geom.in_shape
        kmat = self.channel_matrix()
        if kmat.shape[0] < h * w or h * w > max_pixels:
            return None
        eig = torch.linalg.eigvalsh(kmat.T @ kmat)
        # minus the eigensolver's backward error (a few ulps of the largest eigenvalue per dimension)
        lam_min = float(eig[0]) - h * w * torch.finfo(eig.dtype).eps * float(eig[-1])
        trace = c * float((kmat**2).sum()) + float(self.weight_diagonal().sum())
        return max(lam_min, 0.0) / trace if trace > 0 else None

    def symbol_bound(self) -> float | None:
        """A lower bound on lambda_min / lambda_max of the normal matrix from the weight rows alone, or None.

        A^T A >= W^T D_w^2 W >= min(D_w^2) sigma_min(W)^2, and sigma_min(W) is bounded below by the Fourier symbol
        when the conv is full in its polyphase form (`rgap_bench.linalg.symbol`); lambda_max is at most
        |K|_F^2 + max(D_w^2) sigma_max(W)^2 (and the trace). None without weight rows, with dropped (dead) rows,
        or when the symbol proves nothing."""
        if self.z is None or (self.alive is not None and not bool(self.alive.all())):
            return None
        bounds = symbol_sigma_bounds(self.row_weight, self.row_geom)
        d2 = self.weight_scale**2
        if bounds is None or float(d2.min()) <= 0:
            return None
        low, high = bounds
        c = self.geom.in_shape[0]
        kmat2 = float((self.channel_matrix() ** 2).sum())
        top = min(kmat2 + float(d2.max()) * high**2, c * kmat2 + float(self.weight_diagonal().sum()))
        return float(d2.min()) * low**2 / top if top > 0 else None

    def weight_row_start(self) -> Tensor | None:
        """A PCG warm start from the weight rows alone where they are a square full convolution (CNN6's conv1:
        `symbol.full_conv_solve`), or None. Only a start: PCG still solves the full scaled system from it."""
        if self.z is None or (self.alive is not None and not bool(self.alive.all())):
            return None
        x0 = full_conv_solve(self.row_weight, self.row_geom, self.z)
        return x0 if x0 is not None and bool(torch.isfinite(x0).all()) else None

    def weight_diagonal(self) -> Tensor:
        """Exact diagonal of W^T D_w^2 W, per interior input entry (C, H, W)."""
        if self.z is None:
            return torch.zeros(self.geom.in_shape, dtype=self.k.dtype, device=self.k.device)
        return self._input_grad(self.row_weight**2, (self.weight_scale**2)[None], self.row_geom)


def _symmetric_inverse(blocks: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Inverses of SPD blocks in `dtype` (default: theirs), symmetrised so that `symmetric_bmm` may apply them from
    the right. A compact (float32) preconditioner is also factorised in float32 (CNN6's conv2: 27 -> 12 ms), in
    float64 should float32 rounding break the factorisation."""
    low = blocks.to(dtype or blocks.dtype)
    factor, info = torch.linalg.cholesky_ex(low)
    if bool((info != 0).any()):
        factor = torch.linalg.cholesky(blocks)
    inverse = torch.cholesky_inverse(factor).to(low.dtype)
    return (inverse + inverse.transpose(-1, -2)) / 2


def symmetric_bmm(inverse: Tensor, rows: Tensor) -> Tensor:
    """(S_c v_c^T)^T for symmetric blocks S (C, n, n) and row blocks v (C, m, n): as v S, which torch's CPU bmm runs
    3-5x faster than S v^T for the few columns PCG carries (0.18 against 0.91 ms for 12 blocks of 289, 1 column)."""
    return torch.bmm(rows, inverse)


class BlockJacobi:
    """Preconditioner: per channel c, (diag_c + K^T K)^-1, exact, inverting only the smaller side (Woodbury when
    K is wide); the small inverses are formed once so each application is a few matrix products.

    `compact`: a float64 preconditioner is applied in float32 where its blocks are well conditioned
    (`precision.compact_dtype`, with cond(B_c) <= trace(B_c) / min(diag_c), as K^T K is PSD): half the bytes to
    stream per application (CNN6 32x32's conv2: 12 blocks of 289^2, 8 MB) and float32 products (conv1's Woodbury
    form). Only PCG's search directions change: its residual and iterate stay float64, so it converges to the same
    least-squares solution."""

    def __init__(self, system: ConvSystem, jitter: float = 1e-12, compact: bool = False) -> None:
        c, h, w = system.geom.in_shape
        kmat = system.channel_matrix()  # (m, n), n = H*W
        diag = system.weight_diagonal().reshape(c, h * w)
        scale = float(diag.mean()) + float((kmat**2).sum()) / (h * w) or 1.0
        diag = diag + jitter * scale
        m, n = kmat.shape
        self.shape = (c, h, w)
        cond = float(((diag.sum(1) + (kmat**2).sum()) / diag.min(1).values).max())
        self.dtype = compact_dtype(kmat.dtype, n, cond) if compact else kmat.dtype
        self.kmat = kmat.to(self.dtype)
        if n <= m:
            blocks = torch.diag_embed(diag) + (kmat.T @ kmat)[None]
            self.mode, self.inverse = "direct", _symmetric_inverse(blocks, self.dtype)
        else:
            inv = 1.0 / diag  # (C, n)
            cap = torch.eye(m, dtype=kmat.dtype, device=kmat.device)[None] + (kmat[None] * inv[:, None, :]) @ kmat.T
            self.mode, self.inv = "woodbury", inv.to(self.dtype)
            self.inverse = _symmetric_inverse(cap, self.dtype)

    def __call__(self, r: Tensor) -> Tensor:
        c, h, w = self.shape
        rows = r.reshape(c, h * w).to(self.dtype)
        if self.mode == "direct":
            return symmetric_bmm(self.inverse, rows[:, None])[:, 0].reshape(c, h, w).to(r.dtype)
        dr = self.inv * rows  # (C, n)
        t = symmetric_bmm(self.inverse, (dr @ self.kmat.T)[:, None, :])[:, 0]  # (C, m)
        return (dr - self.inv * (t @ self.kmat)).reshape(c, h, w).to(r.dtype)
