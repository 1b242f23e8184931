"""What the runner needs from an attack plugin, and nothing more.

An attack sees only the global model and what the client sent; `update_kinds` says which updates it reads as they
are, so the runner knows when to hand it a FedAvg delta converted to a gradient estimate instead
(`rgap_bench.fl.updates.as_gradient`, done by the runner because attacks never import `fl`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn

from rgap_bench.types import ClientUpdate, Reconstruction


@runtime_checkable
class Attack(Protocol):
    """An attack plugin: `attack(model, update) -> Reconstruction`."""

    name: str
    update_kinds: tuple[str, ...]  # the `UpdateMetadata.kind`s it accepts, e.g. ("gradient",)

    def __call__(self, model: nn.Module, update: ClientUpdate) -> Reconstruction:
        """Reconstruct the client's inputs from `update`, computed on `model` (the global model)."""
        ...
