"""FedSGD client as a LightningModule: it owns the model and the loss, and emits what it would share."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn

from rgap_bench.errors import ConfigError
from rgap_bench.losses import make_loss
from rgap_bench.types import ClientUpdate, PrivateBatch, UpdateMetadata

LABEL_POLICIES = ("flip_prediction", "true")


class FedSGDClient(L.LightningModule):
    """Computes the gradient of one private batch, the update a FedSGD client sends.

    `label_policy=flip_prediction` (the paper's code) labels each sample with the opposite of the model's current
    prediction, which makes the output-layer scalar equation have a unique root; `true` uses the dataset's
    binary label.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str = "fedsgd",
        loss: str = "binary_logistic",
        reduction: str = "mean",
        label_policy: str = "flip_prediction",
        share_labels: bool = True,
    ) -> None:
        super().__init__()
        if label_policy not in LABEL_POLICIES:
            raise ConfigError(f"client.label_policy must be one of {LABEL_POLICIES}, got {label_policy!r}")
        if reduction not in ("mean", "sum"):
            raise ConfigError(f"client.reduction must be mean or sum, got {reduction!r}")
        self.model = model
        self.loss = make_loss(loss, reduction)
        self.label_policy = label_policy
        self.share_labels = share_labels

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    @property
    def model_device(self) -> torch.device:
        """Where the model's weights are: a model moved before it was wrapped leaves Lightning's `device` behind."""
        return next(self.model.parameters()).device

    def targets(self, batch: PrivateBatch) -> Tensor:
        """Labels the client trains on: binary for the logistic loss, class ids for cross-entropy."""
        if self.label_policy == "true":
            return self.loss.encode_labels(batch.labels, lambda _: batch.binary_labels).to(self.model_device)
        with torch.no_grad():
            logits = self.model(batch.inputs.to(self.model_device))
        return self.loss.other_label(logits)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        return self.loss(self.model(inputs), targets)

    def compute_update(self, batch: PrivateBatch, targets: Tensor | None = None) -> ClientUpdate:
        """The gradient the client shares; pass `targets` to reuse labels already chosen by `targets()`."""
        targets = self.targets(batch) if targets is None else targets
        inputs = batch.inputs.to(self.model_device)
        names, params = zip(*[(n, p) for n, p in self.model.named_parameters() if p.requires_grad], strict=True)
        loss = self.loss(self.model(inputs), targets)
        grads = torch.autograd.grad(loss, params)
        metadata = UpdateMetadata(
            kind="gradient",
            batch_size=batch.batch_size,
            loss=self.loss,
            input_shape=tuple(batch.inputs.shape[1:]),
            labels=targets.detach().cpu() if self.share_labels else None,
            client_loss=float(loss.detach()),
        )
        return ClientUpdate({n: g.detach() for n, g in zip(names, grads, strict=True)}, metadata)
