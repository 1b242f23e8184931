"""`defense=gaussian`: add i.i.d. N(0, sigma^2) to every coordinate of the update (DLG's noise defence)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from rgap_bench.defenses.base import Defense
from rgap_bench.errors import ConfigError
from rgap_bench.types import ClientContext, UpdateMetadata


@dataclass
class GaussianOptions:
    sigma: float = 1e-3  # noise std

    def __post_init__(self) -> None:
        if self.sigma < 0:
            raise ConfigError(f"defense.gaussian.sigma must be >= 0, got {self.sigma}")


class GaussianNoise(Defense):
    Options = GaussianOptions
    default_name = "gaussian"

    def transform(self, tensors: dict[str, Tensor], metadata: UpdateMetadata, context: ClientContext | None) -> dict:
        sigma = self.options.sigma
        if sigma == 0:
            return dict(tensors)
        return {n: t + sigma * self.randn_like(t) for n, t in tensors.items()}
