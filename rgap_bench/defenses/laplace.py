"""`defense=laplace`: add i.i.d. Laplace(0, scale) noise to every coordinate (std = sqrt(2) * scale).

`defense.laplace.relative=true` reads the scale as a fraction of the update's RMS, as `defense.gaussian.relative`
does; the report and the update's metadata carry the absolute std like the Gaussian defence's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from rgap_bench.defenses.base import Defense
from rgap_bench.defenses.gaussian import check_level, update_rms, with_noise
from rgap_bench.types import ClientContext, ClientUpdate, UpdateMetadata


@dataclass
class LaplaceOptions:
    scale: float = 1e-3  # scale b (std sqrt(2) b); relative=true: as a fraction of the update's RMS
    relative: bool = False

    def __post_init__(self) -> None:
        check_level("laplace.scale", self.scale)


class LaplaceNoise(Defense):
    Options = LaplaceOptions
    default_name = "laplace"

    def laplace_like(self, t: Tensor, scale: float) -> Tensor:
        """Inverse-CDF sampling, so the draw comes from this defence's own generator."""
        u = self.rand_like(t.double()) - 0.5
        return (-scale * torch.sign(u) * torch.log1p(-2 * u.abs())).to(t.dtype)

    def transform(self, tensors: dict[str, Tensor], metadata: UpdateMetadata, context: ClientContext | None) -> dict:
        rms = update_rms(tensors)
        scale = self.options.scale * rms if self.options.relative else self.options.scale
        std = math.sqrt(2) * scale
        self._last.update(sigma_abs=std, relative_level=std / rms if rms > 0 else None)
        if scale == 0:
            return dict(tensors)
        return {n: t + self.laplace_like(t, scale) for n, t in tensors.items()}

    def __call__(self, update: ClientUpdate, context: ClientContext | None = None) -> ClientUpdate:
        out = super().__call__(update, context)
        return with_noise(out, self._last["sigma_abs"])
