"""`defense=gaussian`: add i.i.d. N(0, sigma^2) to every coordinate of the update (DLG's noise defence).

`defense.gaussian.relative=true` reads sigma as a fraction of the update's RMS, so one level means the same
signal-to-noise ratio on architectures whose gradients differ in scale by orders of magnitude. Either way the report
records both the absolute sigma used and the relative level, and the update's metadata carries the absolute sigma:
a noise level a defence announces (or that is public by protocol) is what the attacker's discrepancy principle uses.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from torch import Tensor

from rgap_bench.defenses.base import Defense
from rgap_bench.errors import ConfigError
from rgap_bench.types import ClientContext, ClientUpdate, UpdateMetadata


def update_rms(tensors: dict[str, Tensor]) -> float:
    """Root mean square of every coordinate of the update, all tensors together."""
    count = sum(t.numel() for t in tensors.values())
    total = math.fsum(float(t.double().pow(2).sum()) for t in tensors.values())
    return math.sqrt(total / count) if count else 0.0


def check_level(name: str, value: float) -> None:
    """A noise level must be a finite number >= 0 (inf/nan would silently destroy or poison the update)."""
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"defense.{name} must be a finite number >= 0, got {value}")


def with_noise(update: ClientUpdate, std: float) -> ClientUpdate:
    """The update whose metadata announces additive noise of standard deviation `std` per coordinate (independent
    noise of several defences adds in quadrature)."""
    before = update.metadata.noise_sigma or 0.0
    metadata = dataclasses.replace(update.metadata, noise_sigma=math.hypot(before, std))
    return ClientUpdate(update.tensors, metadata)


@dataclass
class GaussianOptions:
    sigma: float = 1e-3  # noise std (relative=true: as a fraction of the update's RMS)
    relative: bool = False  # sigma as a fraction of the update's RMS instead of an absolute std

    def __post_init__(self) -> None:
        check_level("gaussian.sigma", self.sigma)


class GaussianNoise(Defense):
    Options = GaussianOptions
    default_name = "gaussian"

    def transform(self, tensors: dict[str, Tensor], metadata: UpdateMetadata, context: ClientContext | None) -> dict:
        rms = update_rms(tensors)
        sigma = self.options.sigma * rms if self.options.relative else self.options.sigma
        self._last.update(sigma_abs=sigma, relative_level=sigma / rms if rms > 0 else None)
        if sigma == 0:
            return dict(tensors)
        return {n: t + sigma * self.randn_like(t) for n, t in tensors.items()}

    def __call__(self, update: ClientUpdate, context: ClientContext | None = None) -> ClientUpdate:
        out = super().__call__(update, context)
        return with_noise(out, self._last["sigma_abs"])
