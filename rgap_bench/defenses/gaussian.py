"""`defense=gaussian`: add i.i.d. N(0, sigma^2) to every coordinate of the update (DLG's noise defence)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from rgap_bench.defenses.base import Defense
from rgap_bench.errors import ConfigError
from rgap_bench.types import ClientContext, UpdateMetadata


class GaussianNoise(Defense):
    def __init__(self, sigma: float, seed: int = 0, name: str = "gaussian") -> None:
        if sigma < 0:
            raise ConfigError(f"defense.sigma must be >= 0, got {sigma}")
        super().__init__(name, seed)
        self.sigma = float(sigma)

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def transform(self, tensors: dict[str, Tensor], metadata: UpdateMetadata, context: ClientContext | None) -> dict:
        if self.sigma == 0:
            return dict(tensors)
        return {n: t + self.sigma * self.randn_like(t) for n, t in tensors.items()}
