"""A lower bound on a conv layer's smallest singular value from the Fourier symbol of its weight rows.

A stride-s convolution is a stride-1 convolution of the s_h*s_w polyphase components of the padded input (channel
C becomes C*s_h*s_w, each of T = ceil(k/s) taps per axis). When every polyphase component's support lies in
[T-1, N-1] on the N = H_out output grid (per axis), the linear correlation y[o] = sum_t w_t x[o+t] never reaches
past the grid, nor into its first T-1 entries from the wrap-around, so it equals the circular one: W = C E, with E
the injective embedding of the input into the polyphase grid (orthonormal columns) and C block circulant on the
N_h x N_w grid. C's singular values are those of its symbol S(w) (F x C*s_h*s_w) at the N_h*N_w grid frequencies,
so sigma_min(W) >= min_w sigma_min(S(w)): a proof of full column rank from N_h*N_w small SVDs, no n x n matrix.

CNN6's conv1 (3 -> 12, k4 s2 p2, 32x32) is such a "full" convolution: 12 polyphase channels of 16x16 in a 17x17
grid, 2x2 taps, 289 12x12 symbols. Most convs (padding below k-1, e.g. k3 s1 p1) are not, and get None.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rgap_bench.linalg.constraints import ConvGeometry

# N_h N_w F C'^2: the symbol's SVDs (or solves) beyond this many multiply-adds cost more than they save; CNN6's conv1
# at 32x32 is 5e5, the "wide" net's conv1 at 128x128 7e6
MAX_SYMBOL_WORK = 5e8


def _axis_phases(size: int, kernel: int, stride: int, padding: int, out: int) -> int | None:
    """Taps per phase T on one axis when every phase's support lies in [T-1, out-1], else None."""
    taps = -(-kernel // stride)
    for phase in range(stride):
        js = [(i + padding) // stride for i in range(size) if (i + padding) % stride == phase]
        if js and (min(js) < taps - 1 or max(js) > out - 1):
            return None
    return taps


def _polyphase_filter(weight: Tensor, stride: tuple[int, int], taps: tuple[int, int]) -> Tensor:
    """(F, C, kh, kw) -> (F, C*sh*sw, Th, Tw): tap (t, phase) of the polyphase filter is w[s*t + phase]."""
    f, c, kh, kw = weight.shape
    (sh, sw), (th, tw) = stride, taps
    padded = weight.new_zeros(f, c, th * sh, tw * sw)
    padded[:, :, :kh, :kw] = weight
    return padded.reshape(f, c, th, sh, tw, sw).permute(0, 1, 3, 5, 2, 4).reshape(f, c * sh * sw, th, tw)


def symbol_sigma_bounds(weight: Tensor, geom: ConvGeometry) -> tuple[float, float] | None:
    """(lower bound on sigma_min, upper bound on sigma_max) of the unscaled weight-row operator x -> conv(x, W),
    or None when the conv is not full in its polyphase form or its symbol is wide (fewer filters than polyphase
    channels: the bound cannot be positive). The rounding of the symbol's evaluation and of the SVD is subtracted
    (added) with a generous margin, so the bounds are proofs."""
    _, h, w = geom.in_shape
    (kh, kw), (sh, sw), (ph, pw) = geom.kernel, geom.stride, geom.padding
    nh, nw = geom.out_hw
    th = _axis_phases(h, kh, sh, ph, nh)
    tw = _axis_phases(w, kw, sw, pw, nw)
    if th is None or tw is None:
        return None
    filters, channels = weight.shape[0], weight.shape[1] * sh * sw
    if filters < channels or nh * nw * filters * channels**2 > MAX_SYMBOL_WORK:
        return None
    poly = _polyphase_filter(weight, (sh, sw), (th, tw))  # (F, C', Th, Tw)
    grid = torch.zeros(filters, channels, nh, nw, dtype=poly.dtype, device=poly.device)
    grid[:, :, :th, :tw] = poly
    # the symbol sum_t w_t e^{+i w t} at the grid frequencies (ifft2 up to the factor N_h N_w)
    symbol = torch.fft.ifft2(grid) * (nh * nw)  # (F, C', Nh, Nw)
    sv = torch.linalg.svdvals(symbol.permute(2, 3, 0, 1))  # (Nh, Nw, min(F, C'))
    eps = torch.finfo(poly.dtype).eps
    entry = float(poly.abs().sum(dim=(2, 3)).max())  # |S(w)_{fc}| <= this at every frequency
    margin = 16 * eps * (th * tw + nh + nw + filters + channels) * math.sqrt(filters * channels) * entry
    return max(float(sv.min()) - margin, 0.0), float(sv.max()) + margin


def _interior_index(size: int, stride: int, padding: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per interior index i on one axis: its phase (i + p) mod s and its polyphase position (i + p) div s."""
    q = torch.arange(size, device=device) + padding
    return q % stride, q // stride


def full_conv_solve(weight: Tensor, geom: ConvGeometry, z: Tensor) -> Tensor | None:
    """x with conv(x, W) = z when z is consistent, by the circulant factorisation W = C E: u = C^-1 z per grid
    frequency (one small solve each), x = E^T u (the interior entries of the polyphase grid). A warm start for
    PCG on layers the symbol bound applies to (None elsewhere, or where the symbol is not square): on a clean
    update PCG then only removes the float32 rounding of the update, under noise it still converges to the full
    least-squares solution."""
    c, h, w = geom.in_shape
    (kh, kw), (sh, sw), (ph, pw) = geom.kernel, geom.stride, geom.padding
    nh, nw = geom.out_hw
    th, tw = _axis_phases(h, kh, sh, ph, nh), _axis_phases(w, kw, sw, pw, nw)
    if th is None or tw is None or weight.shape[0] != c * sh * sw or nh * nw * (c * sh * sw) ** 3 > MAX_SYMBOL_WORK:
        return None
    poly = _polyphase_filter(weight, (sh, sw), (th, tw))
    grid = torch.zeros(*poly.shape[:2], nh, nw, dtype=poly.dtype, device=poly.device)
    grid[:, :, :th, :tw] = poly
    symbol = (torch.fft.ifft2(grid) * (nh * nw)).permute(2, 3, 0, 1)  # (Nh, Nw, F, C')
    rhs = torch.fft.fft2(z).permute(1, 2, 0)[..., None]  # (Nh, Nw, F, 1)
    u = torch.fft.ifft2(torch.linalg.solve(symbol, rhs)[..., 0].permute(2, 0, 1)).real  # (C', Nh, Nw)
    phase_h, pos_h = _interior_index(h, sh, ph, u.device)
    phase_w, pos_w = _interior_index(w, sw, pw, u.device)
    chan = (
        torch.arange(c, device=u.device)[:, None, None] * (sh * sw)
        + phase_h[None, :, None] * sw
        + phase_w[None, None, :]
    )
    return u[chan, pos_h[None, :, None], pos_w[None, None, :]]
