"""`defense=pruning`: zero the fraction `ratio` of smallest-magnitude entries of each tensor (DLG's, GradAttack's
gradient pruning; also top-k sparsification with k = (1 - ratio) n)."""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class PruningOptions:
    ratio: float = 0.9  # fraction of smallest-magnitude entries zeroed per tensor

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1:
            raise ConfigError(f"defense.pruning.ratio must be in [0, 1], got {self.ratio}")


class Pruning(Defense):
    Options = PruningOptions
    default_name = "pruning"

    def transform(self, tensors: dict[str, Tensor], metadata: UpdateMetadata, context: ClientContext | None) -> dict:
        out = {n: prune_smallest(t, self.options.ratio) for n, t in tensors.items()}
        total = sum(t.numel() for t in out.values())
        self._last["sparsity"] = sum(int((t == 0).sum()) for t in out.values()) / total
        return out
