"""A circulant preconditioner for a large conv layer's normal matrix: its weight rows exactly away from the border.

In polyphase form (`rgap_bench.linalg.symbol`) a stride-s conv is a stride-1 conv of the s_h*s_w phase components
of the padded input; on a periodic grid it is block circulant, and so is W^T D^2 W once the row scales D are
replaced by each filter's mean. Its inverse is one small C' x C' matrix per grid frequency, applied by two real
FFTs. The layer's operator differs from it only near the border (padding, cut taps, rows whose scale differs), so
PCG sees a few outliers instead of the whole spread of the weight symbol, which block-Jacobi (the exact diagonal
only) leaves to it: the "wide" net's conv1 at 128x128 (symbol singular values 7e-4 .. 1.2) takes 270 instead of
1060 iterations.

The gradient rows I_C (x) K^T K are not circulant (k varies over the image). Their optimal circulant approximation
(T. Chan's: the Rayleigh quotient of each Fourier mode) spreads their trace over every direction, but K has rank at
most r = F*kh*kw of the n = H*W pixels of a channel: spread evenly it would lift the n - r directions it does not
touch, which are the weight symbol's near-null frequencies on a layer with few gradient rows (the wide conv1: 1060
-> 460 iterations with it in full, 540 without it, 270 weighted by r/n). So its symbol enters weighted by r/n, its
share of the directions; on a layer with many gradient rows (the wide conv3, r/n = 0.53) it is what makes the
preconditioner work at all (120 iterations; 3000 and no convergence without it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rgap_bench.linalg.operators import ConvSystem
from rgap_bench.linalg.symbol import polyphase_filter

# Layers below this many unknowns keep block-Jacobi: its exact blocks are cheap to build there and the border,
# which the circulant misses, is a larger share of the image (CNN6 32x32's conv1: block-Jacobi 160 iterations,
# an FFT approximation 290-610; CNN6 64x64's convs, 5184-13068 unknowns: mixed, its stride-2 conv5 100 -> 210
# iterations). Every conv from 39204 unknowns up measured so far runs faster with the circulant: the wide net's
# three (49152-69696) and CNN6 128x128's five (16.3 -> 4.7 s and 498 -> 256 s of CPU in all, one thread).
MIN_UNKNOWNS = 32768


def _grid(size: int, padding: int, stride: int, out: int) -> int:
    """Polyphase grid length on one axis: every interior pixel (i + p) // s and every output position fits."""
    return max(-(-(size + padding) // stride), out)


class CirculantPreconditioner:
    """(E^T B^-1 E) r for the block-circulant approximation B of a conv system's normal matrix (module docstring),
    E the embedding of the interior input into the polyphase grid. Symmetric positive definite like B, so PCG may
    use it; `jitter` (relative to B's mean diagonal) keeps a frequency where B is singular invertible."""

    def __init__(self, system: ConvSystem, jitter: float = 1e-12) -> None:
        if system.pool != 1 or system.z is None:
            raise ValueError(
                "the circulant preconditioner needs a conv layer with weight rows and no pooling (got "
                f"pool={system.pool}, weight rows: {system.z is not None}); use BlockJacobi for this layer"
            )
        geom = system.geom
        c, h, w = geom.in_shape
        (kh, kw), (sh, sw), (ph, pw) = geom.kernel, geom.stride, geom.padding
        oh, ow = geom.out_hw
        gh, gw = _grid(h, ph, sh, oh), _grid(w, pw, sw, ow)
        self.shape, self.stride, self.padding, self.grid = (c, h, w), (sh, sw), (ph, pw), (gh, gw)
        half = gw // 2 + 1  # rfft2's frequencies: the rest follow by conjugate symmetry (a real operator)
        taps = (-(-kh // sh), -(-kw // sw))
        poly = polyphase_filter(system.weight, (sh, sw), taps)  # (F, C', Th, Tw), C' = C*sh*sw
        filters, phases = poly.shape[:2]
        grid = poly.new_zeros(filters, phases, gh, gw)
        grid[:, :, : taps[0], : taps[1]] = poly
        # y[o] = sum_t w_t u[o + t]: its symbol sum_t w_t e^{+i w t} is the conjugate of the filter's FFT
        symbol = torch.fft.rfft2(grid).conj().permute(2, 3, 0, 1)  # (Gh, half, F, C')
        d2 = (system.weight_scale**2).reshape(filters, -1).mean(1)  # each filter's mean squared row scale
        blocks = symbol.conj().transpose(-1, -2) @ (d2[:, None] * symbol)
        rank_share = min(filters * kh * kw, h * w) / (h * w)
        grad = self._gradient_symbol(system, (gh, gw), half)  # (Gh, half, sh*sw) per pixel phase
        diag = rank_share * grad.repeat(1, 1, c)  # the same for every channel: phase index c*sh*sw + phase
        blocks = blocks + torch.diag_embed(diag.to(blocks.dtype))
        mean = float(blocks.diagonal(dim1=-2, dim2=-1).real.mean()) or 1.0
        eye = torch.eye(phases, dtype=blocks.dtype, device=blocks.device)
        self.inverse = torch.linalg.inv(blocks + jitter * mean * eye)

    @staticmethod
    def _gradient_symbol(system: ConvSystem, grid: tuple[int, int], half: int) -> Tensor:
        """T. Chan's circulant approximation of I_C (x) K^T K: diagonal over the pixel phases (a tap sees one
        phase), at frequency w the mean over Fourier modes of sum_{f, t in phase} g_ft^2 |k_f^(w)|^2 / N."""
        (kh, kw), (sh, sw) = system.geom.kernel, system.geom.stride
        k = system.k_full
        filters = k.shape[0]
        padded = k.new_zeros(filters, *grid)
        padded[:, : k.shape[1], : k.shape[2]] = k
        power = torch.fft.rfft2(padded).abs() ** 2 / (grid[0] * grid[1])  # (F, Gh, half)
        tap_phase = ((torch.arange(kh) % sh)[:, None] * sw + (torch.arange(kw) % sw)[None, :]).reshape(-1)
        g2 = (system.grad_scale**2).reshape(filters, kh * kw)
        per_phase = g2.new_zeros(filters, sh * sw).index_add_(1, tap_phase.to(g2.device), g2)
        return torch.einsum("fhw,fp->hwp", power[..., :half], per_phase)

    def __call__(self, r: Tensor) -> Tensor:
        (c, h, w), (sh, sw), (ph, pw), (gh, gw) = self.shape, self.stride, self.padding, self.grid
        u = F.pad(r.reshape(c, h, w), (pw, gw * sw - w - pw, ph, gh * sh - h - ph))  # interior -> (C, Gh*sh, Gw*sw)
        u = u.reshape(c, gh, sh, gw, sw).permute(0, 2, 4, 1, 3).reshape(c * sh * sw, gh, gw)
        spectrum = torch.fft.rfft2(u).permute(1, 2, 0)[..., None]  # (Gh, half, C', 1)
        solved = (self.inverse @ spectrum)[..., 0].permute(2, 0, 1)
        v = torch.fft.irfft2(solved, s=(gh, gw)).reshape(c, sh, sw, gh, gw).permute(0, 3, 1, 4, 2)
        return v.reshape(c, gh * sh, gw * sw)[:, ph : ph + h, pw : pw + w].reshape(r.shape)


def circulant_applies(system: ConvSystem) -> bool:
    """Whether a plain layer solve should precondition with the circulant instead of block-Jacobi: a large conv
    (`MIN_UNKNOWNS`) with weight rows and no pooling (the gradient rows' phases then match the weight rows')."""
    c, h, w = system.geom.in_shape
    return system.pool == 1 and system.z is not None and c * h * w >= MIN_UNKNOWNS
