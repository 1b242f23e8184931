"""`defense=quantization`: uniform quantisation of each tensor to 2^bits levels between its min and max
(round to nearest, so the error is at most half a step); the levels are what a low-bit channel would carry."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from rgap_bench.defenses.base import Defense
from rgap_bench.errors import ConfigError
from rgap_bench.types import ClientContext, UpdateMetadata


def quantize(t: Tensor, bits: int) -> Tensor:
    lo, hi = t.min(), t.max()
    if hi == lo:
        return t.clone()
    step = (hi - lo) / (2**bits - 1)
    return lo + ((t - lo) / step).round().clamp(0, 2**bits - 1) * step


@dataclass
class QuantizationOptions:
    bits: int = 8  # 2^bits levels per tensor

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 32:
            raise ConfigError(f"defense.quantization.bits must be between 1 and 32, got {self.bits}")


class Quantization(Defense):
    Options = QuantizationOptions
    default_name = "quantization"

    def transform(self, tensors: dict[str, Tensor], metadata: UpdateMetadata, context: ClientContext | None) -> dict:
        return {n: quantize(t, self.options.bits) for n, t in tensors.items()}
