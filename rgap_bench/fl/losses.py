"""Client losses, keyed by the name carried in the update's metadata."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from rgap_bench.errors import ConfigError

LOSSES = ("binary_logistic", "cross_entropy")


def client_loss(name: str, logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
    """`binary_logistic` is the paper's log(1 + exp(-y mu)), y = 2t - 1 (BCE on one logit); `cross_entropy` is
    softmax cross-entropy over class logits with integer targets."""
    if name == "binary_logistic":
        if logits.shape[1] != 1:
            raise ConfigError(f"binary_logistic needs a model with one output logit, got {logits.shape[1]}")
        return F.binary_cross_entropy_with_logits(logits[:, 0], targets.to(logits.dtype), reduction=reduction)
    if name == "cross_entropy":
        return F.cross_entropy(logits, targets.long(), reduction=reduction)
    raise ConfigError(f"unknown client loss {name!r}; choose one of {', '.join(LOSSES)}")
