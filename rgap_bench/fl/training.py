"""Lightning training shared by the FedAvg client, server pretraining and the utility side of a defence.

One module covers the three: plain (or momentum) SGD on the client loss; given a defence, each step's gradient is
sent through it before the optimiser sees it, the way a defended client would train.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from rgap_bench.losses import Loss
from rgap_bench.types import ClientContext, ClientUpdate, UpdateMetadata


class SupervisedModule(L.LightningModule):
    """SGD on the client `loss` (with its reduction); `defense` (a callable on `ClientUpdate`) turns every step into
    a defended one."""

    def __init__(
        self,
        model: nn.Module,
        loss: Loss,
        lr: float,
        momentum: float = 0.0,
        defense: Callable[..., ClientUpdate] | None = None,
        dataset_size: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.lr = lr
        self.momentum = momentum
        self.defense = defense
        self.dataset_size = dataset_size
        self.automatic_optimization = defense is None
        self.history: list[dict[str, float]] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=self.momentum)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        inputs, targets = batch
        logits = self.model(inputs)
        loss = self.loss(logits, targets)
        correct = float((self.loss.predict(logits.detach()) == targets).double().sum())
        self.history.append({"loss": float(loss.detach()), "correct": correct, "n": float(len(targets))})
        if self.defense is None:
            return loss
        self._defended_step(loss, inputs, targets)
        return None

    def _defended_step(self, loss: Tensor, inputs: Tensor, targets: Tensor) -> None:
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, [p for _, p in named])
        metadata = UpdateMetadata(
            kind="gradient",
            batch_size=len(targets),
            loss=self.loss,
            input_shape=tuple(inputs.shape[1:]),
        )
        update = ClientUpdate({n: g for (n, _), g in zip(named, grads, strict=True)}, metadata)
        context = ClientContext(self.model, inputs, targets, self.loss, self.dataset_size)
        defended = self.defense(update, context)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        for n, p in named:
            p.grad = defended.tensors[n].detach()
        optimizer.step()

    def epoch_summary(self, last: int | None = None) -> dict[str, float]:
        """Mean loss and accuracy over the last `last` steps (all steps when None), as the model trained."""
        steps = self.history[-last:] if last else self.history
        n = sum(s["n"] for s in steps)
        return {
            "train_loss": sum(s["loss"] * s["n"] for s in steps) / max(n, 1),
            "train_acc": sum(s["correct"] for s in steps) / max(n, 1),
        }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Lightning announces devices and warns about workers on every Trainer; runs build several, so hush them."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def fit(module: L.LightningModule, loader: Any, device: torch.device, **limits: Any) -> L.Trainer:
    """Train with a bare CPU/GPU Trainer (no logger, checkpoints or progress bar); `limits`: max_steps/max_epochs."""
    with _quiet():
        trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            log_every_n_steps=1,
            num_sanity_val_steps=0,
            **limits,
        )
        trainer.fit(module, loader)
    return trainer


@torch.no_grad()
def accuracy(model: nn.Module, loss: Loss, inputs: Tensor, targets: Tensor, batch_size: int = 256) -> float:
    """Accuracy of `model` on (inputs, targets), in eval mode and batches, in the loss's label space."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for start in range(0, len(targets), batch_size):
        logits = model(inputs[start : start + batch_size].to(device))
        correct += int((loss.predict(logits).cpu() == targets[start : start + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(targets), 1)
