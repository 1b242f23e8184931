"""`defense=clipping`: scale the whole update down to L2 norm `max_norm` when it is longer (update clipping,
as in DP-FedAvg; no noise)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from rgap_bench.defenses.base import Defense, update_norm
from rgap_bench.errors import ConfigError
from rgap_bench.types import ClientContext, UpdateMetadata


@dataclass
class ClippingOptions:
    max_norm: float = 1.0  # L2 norm bound of the whole update

    def __post_init__(self) -> None:
        if self.max_norm <= 0:
            raise ConfigError(f"defense.clipping.max_norm must be > 0, got {self.max_norm}")


class Clipping(Defense):
    Options = ClippingOptions
    default_name = "clipping"

    def transform(self, tensors: dict[str, Tensor], metadata: UpdateMetadata, context: ClientContext | None) -> dict:
        norm = update_norm(tensors)
        scale = min(1.0, self.options.max_norm / norm) if norm > 0 else 1.0
        self._last.update(norm_before=norm, clipped=scale < 1.0)
        return {n: t * scale for n, t in tensors.items()}
