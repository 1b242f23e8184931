"""`defense=clipping`: scale the whole update down to L2 norm `max_norm` when it is longer (update clipping,
as in DP-FedAvg; no noise)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from rgap_bench.defenses.base import Defense, update_norm
from rgap_bench.errors import ConfigError
from rgap_bench.types import ClientContext, UpdateMetadata


class Clipping(Defense):
    def __init__(self, max_norm: float, seed: int = 0, name: str = "clipping") -> None:
        if max_norm <= 0:
            raise ConfigError(f"defense.max_norm must be > 0, got {max_norm}")
        super().__init__(name, seed)
        self.max_norm = float(max_norm)

    def params(self) -> dict[str, Any]:
        return {"max_norm": self.max_norm}

    def transform(self, tensors: dict[str, Tensor], metadata: UpdateMetadata, context: ClientContext | None) -> dict:
        norm = update_norm(tensors)
        scale = min(1.0, self.max_norm / norm) if norm > 0 else 1.0
        self._last.update(norm_before=norm, clipped=scale < 1.0)
        return {n: t * scale for n, t in tensors.items()}
