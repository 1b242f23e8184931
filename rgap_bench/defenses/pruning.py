"""`defense=pruning`: zero the fraction `ratio` of smallest-magnitude entries of each tensor (DLG's, GradAttack's
gradient pruning; also top-k sparsification with k = (1 - ratio) n)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from rgap_bench.defenses.base import Defense
from rgap_bench.errors import ConfigError
from rgap_bench.types import ClientContext, UpdateMetadata


def prune_smallest(t: Tensor, ratio: float) -> Tensor:
    """Exactly floor(ratio * n) entries become zero (ties broken by position), the rest are kept."""
    flat = t.flatten()
    k = int(ratio * flat.numel())
    if k == 0:
        return t.clone()
    drop = torch.topk(flat.abs(), k, largest=False, sorted=False).indices
    return flat.index_fill(0, drop, 0.0).view_as(t)


class Pruning(Defense):
    def __init__(self, ratio: float, seed: int = 0, name: str = "pruning") -> None:
        if not 0 <= ratio <= 1:
            raise ConfigError(f"defense.ratio must be in [0, 1], got {ratio}")
        super().__init__(name, seed)
        self.ratio = float(ratio)

    def params(self) -> dict[str, Any]:
        return {"ratio": self.ratio}

    def transform(self, tensors: dict[str, Tensor], metadata: UpdateMetadata, context: ClientContext | None) -> dict:
        out = {n: prune_smallest(t, self.ratio) for n, t in tensors.items()}
        total = sum(t.numel() for t in out.values())
        self._last["sparsity"] = sum(int((t == 0).sum()) for t in out.values()) / total
        return out
