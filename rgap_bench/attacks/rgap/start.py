"""Where the recursion starts: one hypothesis on the output layer, whatever loss produced it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from rgap_bench.attacks.rgap.layers import RGAPLayer
from rgap_bench.attacks.rgap.options import RGAPOptions


@dataclass(frozen=True)
class HeadStart:
    """One hypothesis on the output layer: the label, the head's dL/dz (in the shared gradient's scale) and its
    pre-activation z (bias included), from which the recursion solves the head and walks down. `info` goes into
    the reconstruction's info (e.g. the logistic root u, or the softmax head's gamma)."""

    label: int
    k: Tensor
    z: Tensor
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hypotheses:
    """A one-sample update read for the recursion: its layers, one start per (label, root) hypothesis, the options
    its recursions run under (with any noise the defence announced) and the logistic output scalar (None for
    cross-entropy) and whether noise pushed it out of range."""

    layers: list[RGAPLayer]
    starts: list[HeadStart]
    options: RGAPOptions
    c: float | None
    clamped: bool
