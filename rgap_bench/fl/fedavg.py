"""FedAvg client: local SGD through a Lightning Trainer, then the weight delta goes out."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from rgap_bench.errors import ConfigError
from rgap_bench.fl.client import FedSGDClient, FedSGDOptions
from rgap_bench.fl.training import SupervisedModule, fit
from rgap_bench.types import ClientUpdate, PrivateBatch, UpdateMetadata

FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # a larger step size overflows torch's SGD in float32


@dataclass
class FedAvgOptions(FedSGDOptions):
    """FedAvg's local training on top of the FedSGD client's options (`client=fedavg` schema)."""

    name: str = "fedavg"
    local_steps: int | None = 1  # S plain-SGD steps; null = local_epochs passes over the client's data
    local_epochs: int = 1  # E, used when local_steps is null
    lr: float = 0.1  # eta
    batch_size: int | None = None  # local mini-batch; null = all of the client's samples in one batch
    seed: int = 0  # shuffling of the local data
    precision: str = "32-true"  # Lightning precision of local training; "64-true" removes float32 rounding

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.local_steps is not None and self.local_steps < 1) or self.local_epochs < 1:
            raise ConfigError(
                f"client.local_steps and local_epochs must be >= 1, got {self.local_steps}, {self.local_epochs}"
            )
        if not 0 < self.lr <= FLOAT32_MAX or (self.batch_size is not None and self.batch_size < 1):
            raise ConfigError(
                f"client.lr must be > 0 and finite in float32 (<= {FLOAT32_MAX:.3g}) and client.batch_size >= 1, "
                f"got {self.lr}, {self.batch_size}"
            )


class FedAvgClient(FedSGDClient):
    """Trains a copy of the global model for `local_steps` steps (or `local_epochs` epochs) of plain SGD with
    learning rate `lr` on the client's data, and shares new - old weights.

    The client's data is the private batch (the samples under attack); `batch_size` splits it into local
    mini-batches, shuffled from `seed`. Labels are chosen once on the global model, as FedSGD's are. In float32
    the new weights are rounded, so -delta / lr differs from the gradient by ~1e-4 relative; `precision="64-true"`
    trains in float64 and removes that (the delta is sent in the model's dtype either way).
    """

    Options = FedAvgOptions

    def __init__(self, model: nn.Module, options: FedAvgOptions | None = None, **overrides: Any) -> None:
        super().__init__(model, options, **overrides)

    def compute_update(self, batch: PrivateBatch, targets: Tensor | None = None) -> ClientUpdate:
        """The weight delta after local training; the global model itself is left untouched."""
        targets = self.targets(batch) if targets is None else targets
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        local = SupervisedModule(copy.deepcopy(self.model), self.loss, self.options.lr)
        batch_size = min(self.options.batch_size or batch.batch_size, batch.batch_size)
        loader = DataLoader(
            TensorDataset(batch.inputs.cpu(), targets.detach().cpu()),
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.options.seed),
        )
        if self.options.local_steps is not None:
            limits = {"max_steps": self.options.local_steps, "max_epochs": -1}
        else:
            limits = {"max_epochs": self.options.local_epochs}
        trainer = fit(local, loader, self.model_device, precision=self.options.precision, **limits)
        new = dict(local.model.named_parameters())
        old = dict(self.model.named_parameters())
        delta = {n: (new[n].detach().to(self.model_device) - old[n].detach()).to(old[n].dtype) for n in names}
        metadata = UpdateMetadata(
            kind="weight_delta",
            batch_size=batch.batch_size,
            loss=self.loss,
            input_shape=tuple(batch.inputs.shape[1:]),
            labels=targets.detach().cpu() if self.share_labels else None,
            client_loss=local.history[0]["loss"] if local.history else None,
            local_steps=int(trainer.global_step),
            local_epochs=int(trainer.current_epoch),
            lr=self.options.lr,
            local_batch_size=batch_size,
        )
        return ClientUpdate(delta, metadata)
