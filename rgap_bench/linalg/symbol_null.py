"""A full strided conv's null space and a solution of its layer system, in the Fourier coordinates of its symbol.

For a conv that is full in polyphase form (`rgap_bench.linalg.symbol`), W = C E: E places the input's pixels in a
polyphase grid (zeros at the grid positions no pixel reaches) and C is block circulant, so C u = 0 exactly when, at
every grid frequency w, u's Fourier coefficient lies in the null space of the symbol S(w) (F x P, P = C s_h s_w
polyphase channels). The real u with C u = 0 therefore have an orthonormal basis T of plane waves times null vectors
of S(w), one small SVD per frequency (CNN6's conv2 at 64x64: 289 SVDs of 36 x 48, 12 null vectors each, 3468 basis
vectors for 13068 unknowns). Every solution of the layer's system is then x = E^T (u0 + T theta): u0 any u with
C u = z (the symbol's pseudo-inverse per frequency) and theta fixed by the rest of the equations, the grid positions
no pixel reaches (u there = 0) and the gradient rows: M theta = r, M of size (unreached + gradient rows) x 3468
instead of the 13068 x 13068 normal matrix. The layer's null space is E^T T null(M), exactly: the weight rows hold
for every theta, the unreached positions vanish on null(M), and E^T is injective there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from rgap_bench.linalg.constraints import ConvGeometry
from rgap_bench.linalg.symbol import _axis_full, _interior_index, _symbol

CHUNK = 24  # frequencies whose basis vectors are evaluated at once (24 x 24 columns x 13068 pixels: 60 MB)


def full_polyphase(geom: ConvGeometry) -> bool:
    """Whether the conv is full in every polyphase phase (W = C E with C circulant on the output grid)."""
    _, h, w = geom.in_shape
    (kh, kw), (sh, sw), (ph, pw) = geom.kernel, geom.stride, geom.padding
    nh, nw = geom.out_hw
    return all(_axis_full(h, kh, sh, ph, nh)) and all(_axis_full(w, kw, sw, pw, nw))


@dataclass
class SymbolNullBasis:
    """T restricted to the pixels (E^T T) and to the unreached grid positions, evaluated chunk by chunk."""

    geom: ConvGeometry
    frequencies: list[tuple[int, int, bool]]  # (a, b, self-conjugate) for one w of each pair {w, -w}
    kernels: list[Tensor]  # per frequency: (P, d) orthonormal null vectors of S(w), real where w is self-conjugate
    pixel_channel: Tensor  # (n,) polyphase channel of each pixel in (C, H, W) order
    pixel_pos: tuple[Tensor, Tensor]  # (n,), (n,) grid position of each pixel
    unreached: tuple[Tensor, Tensor, Tensor]  # (channel, row, column) of each grid position no pixel reaches
    symbol: Tensor  # (Nh, Nw, F, P)

    @property
    def size(self) -> int:
        return sum(
            k.shape[1] * (1 if real else 2) for (_, _, real), k in zip(self.frequencies, self.kernels, strict=True)
        )

    def chunks(self):
        """(columns, pixel rows (n, cols), unreached rows (u, cols)) of T's basis vectors, CHUNK frequencies at a
        time, in a fixed column order."""
        nh, nw = self.geom.out_hw
        start = 0
        for first in range(0, len(self.frequencies), CHUNK):
            pix, unr = [], []
            for (a, b, real), kernel in zip(
                self.frequencies[first : first + CHUNK], self.kernels[first : first + CHUNK], strict=True
            ):
                for rows, (chan, pos_h, pos_w) in (
                    (pix, (self.pixel_channel, *self.pixel_pos)),
                    (unr, self.unreached),
                ):
                    wave = (
                        torch.exp(2j * math.pi * (a * pos_h.double() / nh + b * pos_w.double() / nw))[:, None]
                        * kernel[chan]
                    )
                    if real:
                        rows.append(wave.real / math.sqrt(nh * nw))
                    else:
                        scale = math.sqrt(2 / (nh * nw))
                        rows.append(torch.cat([wave.real, wave.imag], dim=1) * scale)
            block = torch.cat(pix, dim=1)
            yield slice(start, start + block.shape[1]), block, torch.cat(unr, dim=1)
            start += block.shape[1]

    def synthesize(self, theta: Tensor) -> Tensor:
        """E^T T theta for (size, k) coefficients, as (n, k) pixels: each frequency's coefficients become its Fourier
        coefficient (and the conjugate one at -w), and one inverse FFT makes the grids."""
        nh, nw = self.geom.out_hw
        u_hat = torch.zeros(theta.shape[1], self.symbol.shape[3], nh, nw, dtype=torch.complex128)
        start = 0
        for (a, b, real), kernel in zip(self.frequencies, self.kernels, strict=True):
            d = kernel.shape[1]
            if real:
                u_hat[:, :, a, b] = (kernel @ theta[start : start + d].to(kernel.dtype)).T * math.sqrt(nh * nw)
                start += d
                continue
            coef = torch.complex(theta[start : start + d], -theta[start + d : start + 2 * d])
            wave = (kernel @ coef).T * math.sqrt(nh * nw / 2)
            u_hat[:, :, a, b], u_hat[:, :, (-a) % nh, (-b) % nw] = wave, wave.conj()
            start += 2 * d
        grids = torch.fft.ifft2(u_hat).real  # (k, P, Nh, Nw)
        return grids[:, self.pixel_channel, self.pixel_pos[0], self.pixel_pos[1]].T

    def particular(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """u0 with C u0 = z (minimum norm per frequency): its pixels (n,) and its unreached entries."""
        rhs = torch.fft.fft2(z.detach().cpu().to(torch.complex128))
        u_hat = torch.linalg.pinv(self.symbol) @ rhs.permute(1, 2, 0)[..., None]  # (Nh, Nw, P, 1)
        u = torch.fft.ifft2(u_hat[..., 0].permute(2, 0, 1)).real  # (P, Nh, Nw)
        return u[self.pixel_channel, self.pixel_pos[0], self.pixel_pos[1]], u[self.unreached]


def symbol_null_basis(weight: Tensor, geom: ConvGeometry, rtol: float = 1e-10) -> SymbolNullBasis | None:
    """The basis of the real polyphase grids u with C u = 0, or None when the conv is not full (or too large)."""
    found = _symbol(weight.detach().cpu().double(), geom, None, "any")
    if found is None:
        return None
    symbol, _ = found  # (Nh, Nw, F, P), complex128
    nh, nw, _, channels = symbol.shape
    _, sv, vh = torch.linalg.svd(symbol, full_matrices=True)
    floor = rtol * float(sv.max())
    frequencies, kernels = [], []
    for a in range(nh):
        for b in range(nw):
            mirror = ((-a) % nh, (-b) % nw)
            if (a, b) > mirror:
                continue  # its pair's conjugate
            rank = int((sv[a, b] > floor).sum())
            real = (a, b) == mirror
            if real:  # S(w) is real here: a real orthonormal null basis, from the real SVD
                null = torch.linalg.svd(symbol[a, b].real, full_matrices=True)[2][rank:].T.to(torch.complex128)
            else:
                null = vh[a, b, rank:].conj().T  # (P, d)
            frequencies.append((a, b, real))
            kernels.append(null)
    return SymbolNullBasis(geom, frequencies, kernels, *polyphase_grid(geom, channels), symbol)


def polyphase_grid(geom: ConvGeometry, channels: int) -> tuple[Tensor, tuple[Tensor, Tensor], tuple[Tensor, ...]]:
    """Where E puts each pixel ((C, H, W) order) in the (channels, Nh, Nw) polyphase grid: its channel, its (row,
    column), and the (channel, row, column) of every grid position no pixel reaches."""
    c, h, w = geom.in_shape
    (sh, sw), (ph, pw) = geom.stride, geom.padding
    nh, nw = geom.out_hw
    phase_h, pos_h = _interior_index(h, sh, ph, torch.device("cpu"))
    phase_w, pos_w = _interior_index(w, sw, pw, torch.device("cpu"))
    chan = torch.arange(c)[:, None, None] * (sh * sw) + phase_h[None, :, None] * sw + phase_w[None, None, :]
    rows, cols = pos_h[None, :, None].expand(c, h, w), pos_w[None, None, :].expand(c, h, w)
    reached = torch.zeros(channels, nh, nw, dtype=torch.bool)
    reached[chan, rows, cols] = True
    return chan.reshape(-1), (rows.reshape(-1), cols.reshape(-1)), torch.nonzero(~reached, as_tuple=True)
