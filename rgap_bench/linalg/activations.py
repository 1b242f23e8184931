"""Inverse and derivative of the activations R-GAP can undo."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rgap_bench.errors import UnsupportedModelError

SUPPORTED = "LeakyReLU with a positive slope, or Identity"


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


def invertible_activation(module: nn.Module, where: str) -> PiecewiseLinear:
    """Map an activation module to its inverse, or say why R-GAP cannot pass through it."""
    if isinstance(module, nn.Identity):
        return PiecewiseLinear(1.0)
    if isinstance(module, nn.LeakyReLU) and module.negative_slope > 0:
        return PiecewiseLinear(float(module.negative_slope))
    reason = {
        nn.ReLU: "ReLU zeroes negative pre-activations, so they cannot be recovered (use leaky_relu)",
        nn.LeakyReLU: "a LeakyReLU with slope <= 0 is not invertible",
    }.get(type(module), "R-GAP needs a piecewise-linear, invertible, positively homogeneous activation")
    raise UnsupportedModelError(
        f"{where}: activation {module.__class__.__name__} is not supported by R-GAP: {reason}. Supported: {SUPPORTED}."
    )
