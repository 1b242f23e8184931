"""`defense=laplace`: add i.i.d. Laplace(0, scale) noise to every coordinate (std = sqrt(2) * scale)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rgap_bench.defenses.base import Defense
from rgap_bench.errors import ConfigError
from rgap_bench.types import ClientContext, UpdateMetadata


class LaplaceNoise(Defense):
    def __init__(self, scale: float, seed: int = 0, name: str = "laplace") -> None:
        if scale < 0:
            raise ConfigError(f"defense.scale must be >= 0, got {scale}")
        super().__init__(name, seed)
        self.scale = float(scale)

    def params(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def laplace_like(self, t: Tensor) -> Tensor:
        """Inverse-CDF sampling, so the draw comes from this defence's own generator."""
        u = self.rand_like(t.double()) - 0.5
        return (-self.scale * torch.sign(u) * torch.log1p(-2 * u.abs())).to(t.dtype)

    def transform(self, tensors: dict[str, Tensor], metadata: UpdateMetadata, context: ClientContext | None) -> dict:
        if self.scale == 0:
            return dict(tensors)
        return {n: t + self.laplace_like(t) for n, t in tensors.items()}
