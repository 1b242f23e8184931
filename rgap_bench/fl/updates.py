"""What an attacker can make of a FedAvg update with public metadata alone.

One local step of plain SGD is w' = w - lr g, so -delta / lr is exactly the gradient FedSGD would have sent. After
S steps, -delta / (lr S) is the mean gradient along the local trajectory: the attacker's approximation, which gets
worse as the weights move away from the global model.
"""

from __future__ import annotations

import dataclasses

import torch

from rgap_bench.errors import InvalidUpdateError
from rgap_bench.types import ClientUpdate


def check_finite(update: ClientUpdate, source: str, fix: str) -> None:
    """Refuse an update with NaN/Inf before anyone scores it: a number derived from it would not be a measurement.

    `source` says who produced it (the client, a defence), `fix` what setting to change.
    """
    bad = [name for name, t in update.tensors.items() if not bool(torch.isfinite(t).all())]
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise InvalidUpdateError(f"{source} contains NaN or Inf in {bad[0]}{more}; {fix}")


def as_gradient(update: ClientUpdate) -> ClientUpdate:
    """Gradient-equivalent of an update: unchanged for a gradient, -delta / (lr * steps) for a weight delta."""
    meta = update.metadata
    if meta.kind == "gradient":
        return update
    if meta.kind != "weight_delta":
        raise InvalidUpdateError(f"cannot turn an update of kind {meta.kind!r} into a gradient")
    if meta.lr is None or meta.local_steps is None:
        raise InvalidUpdateError("a weight delta needs its public metadata lr and local_steps to be read as a gradient")
    lr, steps = float(meta.lr), int(meta.local_steps)
    if lr <= 0 or steps < 1:
        raise InvalidUpdateError(f"a weight delta needs lr > 0 and local_steps >= 1, got lr={lr}, steps={steps}")
    scale = -1.0 / (lr * steps)
    metadata = dataclasses.replace(meta, kind="gradient", converted_from="weight_delta")
    return ClientUpdate({n: t * scale for n, t in update.tensors.items()}, metadata)
