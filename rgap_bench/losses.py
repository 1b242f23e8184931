"""Client losses as small typed objects: the one place that knows how a loss reads labels and logits.

Clients, defences (DP-SGD's per-example gradients), training, data loaders and attacks all need the same loss and
the same label space; before this module each of them compared the loss's name to decide. A `Loss` carries its
reduction and answers every such question itself, and `make_loss` is the only place a name turns into behaviour.
The name is what goes into JSON records and the config (`client.loss=binary_logistic`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from rgap_bench.errors import ConfigError

REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class Loss(ABC):
    """A client loss with its reduction (how per-sample losses are combined: "mean" or "sum")."""

    name: ClassVar[str]
    reduction: str = "mean"

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"loss reduction must be one of {REDUCTIONS}, got {self.reduction!r}")

    def with_reduction(self, reduction: str) -> Loss:
        """The same loss combined differently (DP-SGD sums per-example losses; pretraining always averages)."""
        return dataclasses.replace(self, reduction=reduction)

    @abstractmethod
    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The loss of `logits` (B, outputs) against labels in this loss's label space."""

    @abstractmethod
    def soft(self, logits: Tensor, label_logits: Tensor) -> Tensor:
        """The loss against a soft label given as logits (gradient matching optimises these)."""

    @abstractmethod
    def soft_label_shape(self, batch_size: int, outputs: int) -> tuple[int, ...]:
        """Shape of the label logits `soft` takes."""

    @abstractmethod
    def hard_labels(self, label_logits: Tensor) -> Tensor:
        """The labels a soft label stands for."""

    @abstractmethod
    def predict(self, logits: Tensor) -> Tensor:
        """The model's predicted label, in this loss's label space."""

    @abstractmethod
    def other_label(self, logits: Tensor) -> Tensor:
        """A label other than the model's prediction (the paper's `flip_prediction` labelling)."""

    @abstractmethod
    def encode_labels(self, class_ids: Tensor, binary_map: Callable[[Tensor], Tensor]) -> Tensor:
        """Labels in this loss's space from a dataset's class ids; `binary_map` is the dataset's two-class mapping."""


@dataclass(frozen=True)
class BinaryLogistic(Loss):
    """The paper's log(1 + exp(-y mu)), y = 2t - 1: BCE on one logit, labels t in {0, 1}."""

    name: ClassVar[str] = "binary_logistic"

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        if logits.shape[1] != 1:
            raise ConfigError(
                f"binary_logistic needs a model with one output logit, got {logits.shape[1]}: use "
                "client.loss=cross_entropy for a model with one logit per class, or a one-logit model"
            )
        return F.binary_cross_entropy_with_logits(logits[:, 0], targets.to(logits.dtype), reduction=self.reduction)

    def soft(self, logits: Tensor, label_logits: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(logits[:, 0], torch.sigmoid(label_logits), reduction=self.reduction)

    def soft_label_shape(self, batch_size: int, outputs: int) -> tuple[int, ...]:
        return (batch_size,)

    def hard_labels(self, label_logits: Tensor) -> Tensor:
        return (label_logits > 0).long()

    def predict(self, logits: Tensor) -> Tensor:
        return (logits[:, 0] > 0).long()

    def other_label(self, logits: Tensor) -> Tensor:
        return (logits[:, 0] <= 0).long()

    def encode_labels(self, class_ids: Tensor, binary_map: Callable[[Tensor], Tensor]) -> Tensor:
        return binary_map(class_ids).long()


@dataclass(frozen=True)
class CrossEntropy(Loss):
    """Softmax cross-entropy over class logits with integer class ids as labels."""

    name: ClassVar[str] = "cross_entropy"

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        classes = logits.shape[1]
        if classes < 2:
            raise ConfigError(
                "cross_entropy needs a model with one logit per class (>= 2), got 1 output (its loss and gradient "
                "are always 0): give the model a final {kind: linear, out: <classes>} layer (model.outputs=<classes> "
                "for the paper models), or use client.loss=binary_logistic"
            )
        if targets.numel() and int(targets.max()) >= classes:
            raise ConfigError(
                f"label {int(targets.max())} does not fit a model with {classes} output logits: the data has more "
                f"classes than the model has outputs; give the model one output per class (model.outputs, or the "
                f"last layer's out)"
            )
        return F.cross_entropy(logits, targets.long(), reduction=self.reduction)

    def soft(self, logits: Tensor, label_logits: Tensor) -> Tensor:
        # `__call__` casts targets to class ids, so a soft (probability) target needs its own call.
        return F.cross_entropy(logits, label_logits.softmax(dim=1), reduction=self.reduction)

    def soft_label_shape(self, batch_size: int, outputs: int) -> tuple[int, ...]:
        return (batch_size, outputs)

    def hard_labels(self, label_logits: Tensor) -> Tensor:
        return label_logits.argmax(dim=1)

    def predict(self, logits: Tensor) -> Tensor:
        return logits.argmax(dim=1)

    def other_label(self, logits: Tensor) -> Tensor:
        return (logits.argmax(dim=1) + 1) % logits.shape[1]  # any class but the predicted one

    def encode_labels(self, class_ids: Tensor, binary_map: Callable[[Tensor], Tensor]) -> Tensor:
        return class_ids.long()


LOSSES: dict[str, type[Loss]] = {cls.name: cls for cls in (BinaryLogistic, CrossEntropy)}


def make_loss(name: str, reduction: str = "mean") -> Loss:
    """The loss called `name` (as in `client.loss`); an unknown name is a ConfigError listing the known ones."""
    if name not in LOSSES:
        raise ConfigError(f"unknown client loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name](reduction)
