"""FedAvg client: local SGD through a Lightning Trainer, then the weight delta goes out."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from rgap_bench.errors import ConfigError
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.fl.training import SupervisedModule, fit
from rgap_bench.types import ClientUpdate, PrivateBatch, UpdateMetadata


class FedAvgClient(FedSGDClient):
    """Trains a copy of the global model for `local_steps` steps (or `local_epochs` epochs) of plain SGD with
    learning rate `lr` on the client's data, and shares new - old weights.

    The client's data is the private batch (the samples under attack); `batch_size` splits it into local
    mini-batches, shuffled from `seed`. Labels are chosen once on the global model, as FedSGD's are. In float32
    the new weights are rounded, so -delta / lr differs from the gradient by ~1e-4 relative; `precision="64-true"`
    trains in float64 and removes that (the delta is sent in the model's dtype either way).
    """

    def __init__(
        self,
        model: nn.Module,
        name: str = "fedavg",
        loss: str = "binary_logistic",
        reduction: str = "mean",
        label_policy: str = "flip_prediction",
        share_labels: bool = True,
        local_steps: int | None = 1,
        local_epochs: int = 1,
        lr: float = 0.1,
        batch_size: int | None = None,
        seed: int = 0,
        precision: str = "32-true",
    ) -> None:
        super().__init__(model, name, loss, reduction, label_policy, share_labels)
        if (local_steps is not None and local_steps < 1) or local_epochs < 1:
            raise ConfigError(f"client.local_steps and local_epochs must be >= 1, got {local_steps}, {local_epochs}")
        if lr <= 0 or (batch_size is not None and batch_size < 1):
            raise ConfigError(f"client.lr must be > 0 and batch_size >= 1, got {lr}, {batch_size}")
        self.local_steps = local_steps
        self.local_epochs = local_epochs
        self.lr = lr
        self.local_batch_size = batch_size
        self.seed = seed
        self.precision = precision

    def compute_update(self, batch: PrivateBatch, targets: Tensor | None = None) -> ClientUpdate:
        """The weight delta after local training; the global model itself is left untouched."""
        targets = self.targets(batch) if targets is None else targets
        names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        local = SupervisedModule(copy.deepcopy(self.model), self.loss, self.lr)
        batch_size = min(self.local_batch_size or batch.batch_size, batch.batch_size)
        loader = DataLoader(
            TensorDataset(batch.inputs.cpu(), targets.detach().cpu()),
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(self.seed),
        )
        if self.local_steps is not None:
            limits = {"max_steps": self.local_steps, "max_epochs": -1}
        else:
            limits = {"max_epochs": self.local_epochs}
        trainer = fit(local, loader, self.model_device, precision=self.precision, **limits)
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
            lr=self.lr,
            local_batch_size=batch_size,
        )
        return ClientUpdate(delta, metadata)
