"""One conv layer's scaled systems for several samples at once (shared weights; per-sample error k, gradient, z and
row scales), with their block-Jacobi preconditioners, as batched operators on (B, C, H, W).

Several independent attacks on the same model meet the same layer with the same shapes; stacking their systems
turns B sets of small kernels per PCG iteration into one set of batched ones (`pcg.pcg_many`): one conv2d over the
batch for the weight rows, and for the gradient rows a batched product with each sample's K^T K (a tall K) or with
its error through the unfolded input (a wide K: each sample's K is used for only C rows, so forming it would stream
B x m x n numbers per product). Built only from the public pieces of `ConvSystem` and `BlockJacobi`, so pooling,
dead-unit masks and compact preconditioners carry over; tests check it against `ConvSystem.normal` per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from rgap_bench.linalg.constraints import conv_adjoint
from rgap_bench.linalg.operators import BlockJacobi, ConvSystem


class StackedSystems:
    """The normal operators A_b^T A_b of B `ConvSystem`s of one layer (same weights and geometry)."""

    def __init__(self, systems: list[ConvSystem]) -> None:
        first = systems[0]
        if any(s.z is None for s in systems):
            raise ValueError("StackedSystems needs every system's weight rows (z); solve a system without them alone")
        self.geom, self.row_weight, self.row_geom = first.geom, first.row_weight, first.row_geom
        self.shape = first.shape
        self.weight_scale2 = torch.stack([s.weight_scale**2 for s in systems])  # (B, F, Ho, Wo)
        grams = [s.channel_gram() for s in systems]
        self.grams = torch.stack(grams) if grams[0] is not None else None  # (B, n, n): tall K
        self.errors = self.grad_scale2 = None
        if self.grams is None:  # wide K: the gradient rows through the unfolded input
            filters = first.weight.shape[0]
            self.errors = torch.stack([s.k_full.reshape(filters, -1) for s in systems])  # (B, F, L)
            self.grad_scale2 = torch.stack([(s.grad_scale**2).reshape(filters, 1, -1) for s in systems])  # (B,F,1,T)

    def subset(self, keep: Tensor) -> StackedSystems:
        """The systems at the indices `keep` (PCG drops the samples that converged)."""
        out = object.__new__(StackedSystems)
        out.__dict__.update(self.__dict__)
        for name in ("weight_scale2", "grams", "errors", "grad_scale2"):
            value = getattr(self, name)
            setattr(out, name, None if value is None else value[keep])
        return out

    def _gradient_part(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if self.grams is not None:
            return torch.bmm(x.reshape(b, c, h * w), self.grams).reshape(x.shape)
        geom = self.geom
        patches = F.unfold(x, geom.kernel, padding=geom.padding, stride=geom.stride)  # (B, C*T, L)
        rows = torch.bmm(self.errors, patches.transpose(1, 2))  # (B, F, C*T): conv2d_weight per sample
        rows = (rows.reshape(*self.grad_scale2.shape[:2], c, -1) * self.grad_scale2).reshape(rows.shape)
        back = torch.bmm(self.errors.transpose(1, 2), rows)  # (B, L, C*T)
        return F.fold(back.transpose(1, 2), (h, w), geom.kernel, padding=geom.padding, stride=geom.stride)

    def normal(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> A_b^T A_b x_b for every sample."""
        rg = self.row_geom
        y = F.conv2d(x, self.row_weight, stride=rg.stride, padding=rg.padding) * self.weight_scale2
        return self._gradient_part(x) + conv_adjoint(self.row_weight, y, rg)


class StackedBlockJacobi:
    """B `BlockJacobi` preconditioners of one layer (same mode and dtype) applied to (B, C, H, W) at once."""

    def __init__(self, pres: list[BlockJacobi]) -> None:
        first = pres[0]
        if any(p.mode != first.mode or p.dtype != first.dtype for p in pres):
            raise ValueError("StackedBlockJacobi needs preconditioners of one mode and dtype; group them first")
        self.mode, self.dtype, self.shape = first.mode, first.dtype, first.shape
        self.inverse = torch.stack([p.inverse for p in pres])  # (B, C, n, n) direct, (B, C, m, m) Woodbury
        self.inv = torch.stack([p.inv for p in pres]) if self.mode == "woodbury" else None  # (B, C, n)
        self.kmat = torch.stack([p.kmat for p in pres]) if self.mode == "woodbury" else None  # (B, m, n)

    def subset(self, keep: Tensor) -> StackedBlockJacobi:
        out = object.__new__(StackedBlockJacobi)
        out.__dict__.update(self.__dict__)
        for name in ("inverse", "inv", "kmat"):
            value = getattr(self, name)
            setattr(out, name, None if value is None else value[keep])
        return out

    def _blocks(self, rows: Tensor) -> Tensor:
        """(B, C, d) -> each row times its (symmetric) block, as `operators.symmetric_bmm` does per sample."""
        b, c, d = rows.shape
        return torch.bmm(rows.reshape(b * c, 1, d), self.inverse.reshape(b * c, d, d)).reshape(b, c, d)

    def __call__(self, r: Tensor) -> Tensor:
        b = r.shape[0]
        c, h, w = self.shape
        rows = r.reshape(b, c, h * w).to(self.dtype)
        if self.mode == "direct":
            return self._blocks(rows).reshape(r.shape).to(r.dtype)
        dr = self.inv * rows  # (B, C, n)
        t = self._blocks(torch.bmm(dr, self.kmat.transpose(1, 2)))  # (B, C, m)
        return (dr - self.inv * torch.bmm(t, self.kmat)).reshape(r.shape).to(r.dtype)
