"""`defense=dpsgd`: DP-SGD's update (Abadi et al. 2016) with the privacy it spends.

Per-example gradients come from torch.func (vmap over grad of a functional call), each is clipped to L2 norm
`clip_norm`, they are summed, N(0, (noise_multiplier * clip_norm)^2) is added per coordinate, and the sum is
divided by the batch size for a mean-reduced loss. The (epsilon, delta) spent by the releases made so far comes from
Opacus's RDP accountant for the sampled Gaussian mechanism, with sampling rate batch size / local dataset size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from rgap_bench.defenses.base import Defense
from rgap_bench.errors import ConfigError
from rgap_bench.losses import Loss
from rgap_bench.types import ClientContext, UpdateMetadata


def per_sample_gradients(model: nn.Module, inputs: Tensor, targets: Tensor, loss: Loss) -> dict[str, Tensor]:
    """Gradient of each sample's loss, stacked on a leading batch axis, for every trainable parameter."""
    loss = loss.with_reduction("sum")
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def sample_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return loss(logits, y.unsqueeze(0))

    return vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, inputs, targets)


def rdp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of `steps` sampled-Gaussian releases at (noise_multiplier, sample_rate), Opacus's RDP accountant."""
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    from opacus.accountants import RDPAccountant  # slow import, only when a DP run asks for it

    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return float(accountant.get_epsilon(delta=delta))


@dataclass
class DPSGDOptions:
    clip_norm: float = 1.0  # per-example L2 clipping norm C
    noise_multiplier: float = 1.0  # noise std / C
    delta: float = 1e-5  # delta of the reported (epsilon, delta)
    sample_rate: float | None = None  # null = batch size / local dataset size

    def __post_init__(self) -> None:
        if self.clip_norm <= 0 or self.noise_multiplier < 0:
            raise ConfigError(
                "defense.dpsgd needs clip_norm > 0 and noise_multiplier >= 0, "
                f"got {self.clip_norm}, {self.noise_multiplier}"
            )
        if not 0 < self.delta < 1 or (self.sample_rate is not None and not 0 < self.sample_rate <= 1):
            raise ConfigError(
                f"defense.dpsgd needs 0 < delta < 1 and 0 < sample_rate <= 1, got {self.delta}, {self.sample_rate}"
            )


class DPSGD(Defense):
    Options = DPSGDOptions
    default_name = "dpsgd"

    def __init__(self, options: DPSGDOptions | None = None, /, **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.clip_norm = float(self.options.clip_norm)
        self.noise_multiplier = float(self.options.noise_multiplier)
        self.delta = float(self.options.delta)
        self.sample_rate = self.options.sample_rate
        self._rate: float | None = self.sample_rate

    def params(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm, "noise_multiplier": self.noise_multiplier, "delta": self.delta}

    def epsilon(self) -> float:
        """Privacy spent by all releases this defence has made (one per call)."""
        return rdp_epsilon(self.noise_multiplier, self._rate or 1.0, self.calls, self.delta)

    def transform(self, tensors: dict[str, Tensor], metadata: UpdateMetadata, context: ClientContext | None) -> dict:
        if metadata.kind != "gradient":
            raise ConfigError(
                f"dpsgd privatises a gradient step (client=fedsgd); the update is a {metadata.kind!r}. "
                "For FedAvg use defense=[clipping,gaussian] (DP-FedAvg style)"
            )
        if context is None:
            raise ConfigError("dpsgd needs the client's model and private batch (a ClientContext)")
        if metadata.defenses:
            raise ConfigError("dpsgd recomputes the update from per-example gradients: put it first in the pipeline")
        grads = per_sample_gradients(context.model, context.inputs, context.targets, context.loss)
        batch = context.inputs.shape[0]
        norms = torch.linalg.vector_norm(torch.cat([g.flatten(1) for g in grads.values()], dim=1), dim=1)
        factor = (self.clip_norm / (norms + 1e-6)).clamp(max=1.0)  # Opacus's clipping factor
        divisor = batch if metadata.loss.reduction == "mean" else 1
        out = {}
        for n, g in grads.items():
            summed = torch.einsum("b,b...->...", factor, g)
            noise = self.noise_multiplier * self.clip_norm * self.randn_like(summed)
            out[n] = ((summed + noise) / divisor).to(tensors[n].dtype)
        if self.sample_rate is None:
            self._rate = batch / context.dataset_size if context.dataset_size else 1.0
        self._last.update(clipped_fraction=float((norms > self.clip_norm).double().mean()), sample_rate=self._rate)
        return out

    def report(self) -> dict[str, Any]:
        return {**super().report(), "steps": self.calls, "epsilon": self.epsilon()}
