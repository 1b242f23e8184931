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


def full_polyphase(geom: ConvGeometry) -> bool:
    """Whether the conv is full in every polyphase phase (W = C E with C circulant on the output grid)."""
    _, h, w = geom.in_shape
    (kh, kw), (sh, sw), (ph, pw) = geom.kernel, geom.stride, geom.padding
    nh, nw = geom.out_hw
    return all(_axis_full(h, kh, sh, ph, nh)) and all(_axis_full(w, kw, sw, pw, nw))


@dataclass
class SymbolNullBasis:
    """T restricted to the pixels (E^T T), to the unreached grid positions, and seen by the gradient rows."""

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

    def _columns(self, values) -> Tensor:
        """T's basis vectors evaluated by a linear map: `values(a, b, kernel)` gives the map's values on the complex
        waves e^{i w q} v_j (one column per null vector v_j), turned here into the real basis' columns."""
        nh, nw = self.geom.out_hw
        out = []
        for (a, b, real), kernel in zip(self.frequencies, self.kernels, strict=True):
            wave = values(a, b, kernel)
            if real:
                out.append(wave.real / math.sqrt(nh * nw))
            else:
                out.append(torch.cat([wave.real, wave.imag], dim=1) * math.sqrt(2 / (nh * nw)))
        return torch.cat(out, dim=1)

    def _phase(self, a: int, b: int, rows: Tensor, cols: Tensor) -> Tensor:
        nh, nw = self.geom.out_hw
        return torch.exp(2j * math.pi * (a * rows.double() / nh + b * cols.double() / nw))

    def pixels(self) -> Tensor:
        """E^T T: (n, size)."""
        chan, (rows, cols) = self.pixel_channel, self.pixel_pos
        return self._columns(lambda a, b, kernel: self._phase(a, b, rows, cols)[:, None] * kernel[chan])

    def unreached_rows(self) -> Tensor:
        """T at the grid positions no pixel reaches: (unreached, size)."""
        chan, rows, cols = self.unreached
        return self._columns(lambda a, b, kernel: self._phase(a, b, rows, cols)[:, None] * kernel[chan])

    def gradient_rows(self, k: Tensor, scale: Tensor) -> Tensor:
        """The gradient rows dL/dW[f, c, t] = sum_p k[f, p] x[c, s p + t - pad] (times `scale`, (F, 1, kh, kw)) on
        E^T T: (C F kh kw, size), rows in (c, f, t) order. On a wave the row is the masked k's Fourier coefficient:
        tap t reads grid channel c s^2 + (t mod s) at position p + t div s, so a wave e^{i w q} v gives
        v[chan] e^{i w (t div s)} sum_p k_t[p] e^{i w p}, k_t being k where tap t reads a pixel (not padding)."""
        c, h, w = self.geom.in_shape
        (kh, kw), (sh, sw), (ph, pw) = self.geom.kernel, self.geom.stride, self.geom.padding
        nh, nw = self.geom.out_hw
        filters = k.shape[0]
        th, tw = torch.arange(kh), torch.arange(kw)
        valid_h = (sh * torch.arange(nh)[None, :] + th[:, None] - ph >= 0) & (
            sh * torch.arange(nh) + th[:, None] - ph < h
        )
        valid_w = (sw * torch.arange(nw)[None, :] + tw[:, None] - pw >= 0) & (
            sw * torch.arange(nw) + tw[:, None] - pw < w
        )
        mask = valid_h[:, None, :, None] & valid_w[None, :, None, :]  # (kh, kw, Nh, Nw)
        masked = k.detach().cpu().double()[:, None, None] * mask  # (F, kh, kw, Nh, Nw)
        spectra = torch.fft.ifft2(masked) * (nh * nw)  # sum_p k_t[p] e^{+i w p}
        spectra = spectra * scale.detach().cpu().double().reshape(filters, kh, kw, 1, 1)
        chan = torch.arange(c)[:, None, None] * (sh * sw) + (th % sh)[None, :, None] * sw + (tw % sw)[None, None, :]
        shift_h, shift_w = (th // sh).double(), (tw // sw).double()

        def values(a: int, b: int, kernel: Tensor) -> Tensor:
            lead = torch.exp(2j * math.pi * (a * shift_h[:, None] / nh + b * shift_w[None, :] / nw))  # (kh, kw)
            row = spectra[:, :, :, a, b] * lead  # (F, kh, kw)
            return (row[None, :, :, :, None] * kernel[chan][:, None]).reshape(c * filters * kh * kw, kernel.shape[1])

        return self._columns(values)

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
