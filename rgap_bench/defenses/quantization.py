"""`defense=quantization`: uniform quantisation of each tensor to 2^bits levels between its min and max
(round to nearest, so the error is at most half a step); the levels are what a low-bit channel would carry."""

from __future__ import annotations

from typing import Any

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


class Quantization(Defense):
    def __init__(self, bits: int, seed: int = 0, name: str = "quantization") -> None:
        if not 1 <= bits <= 32:
            raise ConfigError(f"defense.bits must be between 1 and 32, got {bits}")
        super().__init__(name, seed)
        self.bits = int(bits)

    def params(self) -> dict[str, Any]:
        return {"bits": self.bits}

    def transform(self, tensors: dict[str, Tensor], metadata: UpdateMetadata, context: ClientContext | None) -> dict:
        return {n: quantize(t, self.bits) for n, t in tensors.items()}
