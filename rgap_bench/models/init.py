"""`model.init`: the weight initialisation of a built network.

`default` keeps PyTorch's (Kaiming-uniform) initialisation, which every result in the suite used so far. `normal`
is the R-GAP paper's `utils.weight_init`: every conv/linear weight ~ N(0, std^2), biases 0. The init decides the
gradient's scale and how many LeakyReLU units sit near their kink, so noise results depend on it and must say which
one was used. Draws come from torch's global generator, which the run seeds with its `seed` before the model is built.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rgap_bench.errors import ConfigError

INITS = ("default", "normal")


def check_init(init: str, std: float) -> None:
    if init not in INITS:
        raise ConfigError(f"model.init={init!r} is not an initialisation; choose one of {', '.join(INITS)}")
    if not (math.isfinite(std) and std > 0):
        raise ConfigError(f"model.init_std must be a finite number > 0 (the weights' standard deviation), got {std}")


def initialize(model: nn.Module, init: str = "default", std: float = 0.01) -> nn.Module:
    """Re-initialise `model`'s conv/linear layers in place (nothing for `default`); returns the model."""
    check_init(init, std)
    if init == "normal":
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Conv2d | nn.Linear):
                    module.weight.normal_(0.0, std)
                    if module.bias is not None:
                        module.bias.zero_()
    return model
