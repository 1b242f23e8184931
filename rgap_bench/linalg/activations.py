"""Inverse and derivative of the activations R-GAP can undo (which modules qualify: `rgap_bench.models.checks`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PiecewiseLinear:
    """sigma(z) = z for z >= 0 and slope * z below; Identity is slope 1. Invertible whenever slope > 0."""

    slope: float

    def inverse(self, x: Tensor) -> Tensor:
        return torch.where(x < 0, x / self.slope, x) if self.slope != 1.0 else x

    def derivative(self, z: Tensor) -> Tensor:
        """sigma'(z), with autograd's convention at z = 0 (the slope): a black image patch gives z = 0 exactly,
        and the client's gradient used the slope there."""
        if self.slope == 1.0:
            return torch.ones_like(z)
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, self.slope))


@dataclass(frozen=True)
class Smooth:
    """An invertible smooth activation (sigmoid or tanh): sigma^-1 exists on sigma's open range, so a reconstructed
    output is first clipped a hair inside that range (rounding can put an exact solve on or past its edge)."""

    name: str  # sigmoid | tanh

    def inverse(self, x: Tensor) -> Tensor:
        tiny = torch.finfo(x.dtype).eps
        if self.name == "sigmoid":
            return torch.logit(x.clamp(tiny, 1 - tiny))
        return torch.atanh(x.clamp(-1 + tiny, 1 - tiny))

    def derivative(self, z: Tensor) -> Tensor:
        if self.name == "sigmoid":
            s = torch.sigmoid(z)
            return s * (1 - s)
        return 1 - torch.tanh(z) ** 2


@dataclass(frozen=True)
class Rectifier:
    """ReLU, sigma(z) = max(z, 0): piecewise linear with slope 0, so not invertible where the output is 0. A "dead"
    unit (output 0) only says z <= 0: it carries no weight equation, and sigma'(z) = 0 removes it from the gradient
    below. `dead` decides which outputs are 0 from a reconstruction that carries rounding (the recursion drops their
    weight rows); `inverse` is z for the live ones and a placeholder 0 for the dead ones."""

    def dead(self, x: Tensor, tol: float) -> Tensor:
        """Outputs within `tol` x max|x| of 0 (attack.relu_dead_tol): a reconstructed 0 is rounding-sized, never
        exactly 0, while a live unit that small is as rare as `tol` itself."""
        return x.abs() <= tol * x.abs().max()

    def inverse(self, x: Tensor) -> Tensor:
        return x.clamp_min(0)

    def derivative(self, z: Tensor) -> Tensor:
        """1 above 0, 0 at and below it (autograd's convention at z = 0)."""
        return (z > 0).to(z.dtype)


Activation = PiecewiseLinear | Smooth | Rectifier
