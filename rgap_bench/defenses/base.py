"""What every defence shares: the update-in/update-out contract, its own noise generator, and a cost report.

A defence runs on the client, after the update is computed and before it is sent, so it may use the client's
private data through a `ClientContext` (DP-SGD needs per-example gradients); attacks never see the context.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from rgap_bench.options import build_options
from rgap_bench.types import ClientContext, ClientUpdate, UpdateMetadata


def update_norm(tensors: dict[str, Tensor]) -> float:
    """L2 norm of the whole update, all tensors flattened into one vector."""
    return float(torch.linalg.vector_norm(torch.stack([t.double().norm() for t in tensors.values()])))


def relative_distortion(before: dict[str, Tensor], after: dict[str, Tensor]) -> float:
    """||u' - u|| / ||u||: the price a defence charges the update (inf for a zero update changed)."""
    diff = update_norm({n: after[n].double() - before[n].double() for n in before})
    norm = update_norm(before)
    return diff / norm if norm > 0 else (0.0 if diff == 0 else float("inf"))


class Defense(ABC):
    """A transform of an update with a seeded generator and a report of its parameters and cost.

    Each defence declares its options dataclass (`Options`, the schema of its config node `defense.<name>` and the
    one home of its defaults); `seed` and `name` are the pipeline's, not the defence's.
    """

    Options: ClassVar[type]
    default_name: ClassVar[str]

    def __init__(self, options: Any = None, /, *, seed: int = 0, name: str | None = None, **overrides: Any) -> None:
        self.options = build_options(self.Options, options, overrides)
        self.name = name or self.default_name
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.calls = 0
        self._last: dict[str, Any] = {}

    @abstractmethod
    def transform(self, tensors: dict[str, Tensor], metadata: UpdateMetadata, context: ClientContext | None) -> dict:
        """Return the defended tensors (same names and shapes); may set `self._last` entries."""

    def params(self) -> dict[str, Any]:
        """The defence's parameters, as they go into the metrics."""
        return dataclasses.asdict(self.options)

    def __call__(self, update: ClientUpdate, context: ClientContext | None = None) -> ClientUpdate:
        self._last = {}
        tensors = self.transform(update.tensors, update.metadata, context)
        self.calls += 1
        self._last["distortion"] = relative_distortion(update.tensors, tensors)
        metadata = dataclasses.replace(update.metadata, defenses=(*update.metadata.defenses, self.name))
        return ClientUpdate(tensors, metadata)

    def report(self) -> dict[str, Any]:
        """Parameters plus the cost measured on the last call (relative distortion and defence-specific keys)."""
        return {"name": self.name, **self.params(), **self._last}

    def randn_like(self, t: Tensor) -> Tensor:
        """Standard normal noise from this defence's own generator (reproducible whatever else draws numbers)."""
        return torch.randn(t.shape, generator=self.generator, dtype=torch.float64).to(t.device, t.dtype)

    def rand_like(self, t: Tensor) -> Tensor:
        return torch.rand(t.shape, generator=self.generator, dtype=torch.float64).to(t.device, t.dtype)
