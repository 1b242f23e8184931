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

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from rgap_bench.linalg.constraints import ConvGeometry

_SHARED: ContextVar[dict | None] = ContextVar("symbol_bounds_shared", default=None)


@contextmanager
def shared_weights() -> Iterator[None]:
    """Inside, each bound below is computed once per weight (by content) and geometry and then reused: they depend on
    a layer's weights only, which every sample of `RGAP.attack_many` shares (CNN6's conv1 and conv2: ~30 ms of a
    0.2 s attack). Outside, nothing is kept."""
    token = _SHARED.set(_SHARED.get() if _SHARED.get() is not None else {})
    try:
        yield
    finally:
        _SHARED.reset(token)


def _shared(bound):
    @functools.wraps(bound)
    def wrapper(weight: Tensor, geom: ConvGeometry, *args):
        memo = _SHARED.get()
        if memo is None:
            return bound(weight, geom, *args)
        extra = tuple(tuple(a.tolist()) if isinstance(a, Tensor) else a for a in args)
        content = weight.detach().cpu().numpy().tobytes()
        key = (bound.__name__, weight.dtype, str(weight.device), tuple(weight.shape), content, geom, extra)
        if key not in memo:
            memo[key] = bound(weight, geom, *args)
        return memo[key]

    return wrapper


# N_h N_w F C'^2: the symbol's SVDs (or solves) beyond this many multiply-adds cost more than they save; CNN6's conv1
# at 32x32 is 5e5, the "wide" net's conv1 at 128x128 7e6
MAX_SYMBOL_WORK = 5e8


def _axis_full(size: int, kernel: int, stride: int, padding: int, out: int) -> list[bool]:
    """Per phase on one axis: whether its support lies in [T-1, out-1], T = ceil((kernel - phase) / stride) its own
    taps, so that its linear correlation equals the circular one on the out-long grid."""
    full = []
    for phase in range(stride):
        taps = max(-(-(kernel - phase) // stride), 1)
        js = [(i + padding) // stride for i in range(size) if (i + padding) % stride == phase]
        full.append(not js or (min(js) >= taps - 1 and max(js) <= out - 1))
    return full


def polyphase_filter(weight: Tensor, stride: tuple[int, int], taps: tuple[int, int]) -> Tensor:
    """(F, C, kh, kw) -> (F, C*sh*sw, Th, Tw): tap (t, phase) of the polyphase filter is w[s*t + phase]."""
    f, c, kh, kw = weight.shape
    (sh, sw), (th, tw) = stride, taps
    padded = weight.new_zeros(f, c, th * sh, tw * sw)
    padded[:, :, :kh, :kw] = weight
    return padded.reshape(f, c, th, sh, tw, sw).permute(0, 1, 3, 5, 2, 4).reshape(f, c * sh * sw, th, tw)


def phase_channels(channels: int, stride: tuple[int, int], phases: list[tuple[int, int]]) -> Tensor:
    """The polyphase channels (c * sh * sw + ph * sw + pw) of the given (row, column) phases, for every channel."""
    sh, sw = stride
    index = [c * sh * sw + a * sw + b for c in range(channels) for a, b in phases]
    return torch.tensor(sorted(index), dtype=torch.long)


def _symbol(weight: Tensor, geom: ConvGeometry, columns: Tensor | None, shape: str) -> tuple[Tensor, Tensor] | None:
    """The symbol (Nh, Nw, F, C'') at the grid frequencies of the polyphase channels `columns` (None: all) and the
    polyphase filter, or None when one of them is not full, the symbol is not of `shape` ("tall": at least as many
    filters as columns, "square", "any"), or too large."""
    _, h, w = geom.in_shape
    (kh, kw), (sh, sw), (ph, pw) = geom.kernel, geom.stride, geom.padding
    nh, nw = geom.out_hw
    full_h, full_w = _axis_full(h, kh, sh, ph, nh), _axis_full(w, kw, sw, pw, nw)
    full = torch.tensor([fh and fw for fh in full_h for fw in full_w]).repeat(weight.shape[1])  # per channel
    columns = torch.arange(full.numel()) if columns is None else columns
    filters, count = weight.shape[0], columns.numel()
    too_large = nh * nw * filters * count**2 > MAX_SYMBOL_WORK
    fits = {"tall": filters >= count, "square": filters == count, "any": True}[shape]
    if not bool(full[columns].all()) or not fits or too_large:
        return None
    taps = (-(-kh // sh), -(-kw // sw))
    poly = polyphase_filter(weight, (sh, sw), taps)[:, columns.to(weight.device)]  # (F, C'', Th, Tw)
    grid = torch.zeros(filters, count, nh, nw, dtype=poly.dtype, device=poly.device)
    grid[:, :, : taps[0], : taps[1]] = poly
    # the symbol sum_t w_t e^{+i w t} at the grid frequencies (ifft2 up to the factor N_h N_w)
    return (torch.fft.ifft2(grid) * (nh * nw)).permute(2, 3, 0, 1), poly


@_shared
def symbol_sigma_bounds(
    weight: Tensor, geom: ConvGeometry, columns: Tensor | None = None
) -> tuple[float, float] | None:
    """(lower bound on sigma_min, upper bound on sigma_max) of the unscaled weight-row operator x -> conv(x, W),
    restricted to the input pixels of the polyphase channels `columns` (None: all), or None when one of those
    phases is not full or the symbol is wide (fewer filters than columns: the bound cannot be positive). The
    rounding of the symbol's evaluation and of the SVD is subtracted (added) with a generous margin, so the bounds
    are proofs."""
    found = _symbol(weight, geom, columns, "tall")
    if found is None:
        return None
    symbol, poly = found
    nh, nw, filters, count = symbol.shape
    sv = torch.linalg.svdvals(symbol)  # (Nh, Nw, count)
    eps = torch.finfo(poly.dtype).eps
    entry = float(poly.abs().sum(dim=(2, 3)).max())  # |S(w)_{fc}| <= this at every frequency
    taps = poly.shape[2] * poly.shape[3]
    margin = 16 * eps * (taps + nh + nw + filters + count) * math.sqrt(filters * count) * entry
    return max(float(sv.min()) - margin, 0.0), float(sv.max()) + margin


@_shared
def symbol_norm_bound(weight: Tensor, geom: ConvGeometry) -> float | None:
    """An upper bound on |W|_2 for a conv that is full in every phase (W = C E, |W| <= |C| = the largest singular
    value of its symbol over the grid), or None."""
    found = _symbol(weight, geom, None, "any")
    if found is None:
        return None
    symbol, poly = found
    entry = float(poly.abs().sum(dim=(2, 3)).max())
    margin = 16 * torch.finfo(poly.dtype).eps * (sum(symbol.shape)) * math.sqrt(symbol.shape[2] * symbol.shape[3])
    return float(torch.linalg.matrix_norm(symbol, ord=2).max()) + margin * entry


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
    found = _symbol(weight, geom, None, "square")
    if found is None:
        return None
    symbol, _ = found
    c, h, w = geom.in_shape
    (sh, sw), (ph, pw) = geom.stride, geom.padding
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
