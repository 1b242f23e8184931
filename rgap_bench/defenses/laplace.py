"""`defense=laplace`: add i.i.d. Laplace(0, scale) noise to every coordinate (std = sqrt(2) * scale)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rgap_bench.defenses.base import Defense
from rgap_bench.errors import ConfigError
from rgap_bench.types import ClientContext, UpdateMetadata


@dataclass
class LaplaceOptions:
    scale: float = 1e-3  # scale b (std sqrt(2) b)

    def __post_init__(self) -> None:
        if self.scale < 0:
            raise ConfigError(f"defense.laplace.scale must be >= 0, got {self.scale}")


class LaplaceNoise(Defense):
    Options = LaplaceOptions
    default_name = "laplace"

    def laplace_like(self, t: Tensor) -> Tensor:
        """Inverse-CDF sampling, so the draw comes from this defence's own generator."""
        u = self.rand_like(t.double()) - 0.5
        return (-self.options.scale * torch.sign(u) * torch.log1p(-2 * u.abs())).to(t.dtype)

    def transform(self, tensors: dict[str, Tensor], metadata: UpdateMetadata, context: ClientContext | None) -> dict:
        if self.options.scale == 0:
            return dict(tensors)
        return {n: t + self.laplace_like(t) for n, t in tensors.items()}
