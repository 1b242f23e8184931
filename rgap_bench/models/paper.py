"""The architectures of the R-GAP paper (its repository's exact layer specs, without bias and with one logit unless
`outputs` / `bias` say otherwise).

`cnn6d` differs from `cnn6` only in the width of conv2/conv3 (12->20->36 instead of 12->36->36): its conv2 has
fewer outputs than inputs, the rank-deficient layer the paper uses to show how architecture limits leakage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rgap_bench.errors import ConfigError
from rgap_bench.models.init import check_init, initialize
from rgap_bench.models.layers import LayerSpec, SequentialNet, build_from_specs
from rgap_bench.options import build_options


def _cnn6_specs(conv2_channels: int, o: PaperModelOptions) -> list[LayerSpec]:
    conv = [  # (out, kernel, stride, padding)
        (12, 4, 2, 2),
        (conv2_channels, 3, 2, 1),
        (36, 3, 1, 1),
        (36, 3, 1, 1),
        (64, 3, 2, 1),
        (128, 3, 1, 1),
    ]
    specs = [LayerSpec("conv", c, k, s, p, "leaky_relu", o.negative_slope, o.bias) for c, k, s, p in conv]
    return [*specs, LayerSpec("linear", o.outputs, activation="identity", bias=o.bias)]


@dataclass
class PaperModelOptions:
    """cnn6's input shape and activation slope: the single home of the paper models' defaults (`model=cnn6` etc.
    take the shape from the data config)."""

    name: str = "cnn6"
    in_channels: int = 3
    image_size: int = 32
    negative_slope: float = 0.2
    # the paper's nets: one logit (binary logistic loss), no biases; outputs: C > 1 gives softmax logits for
    # client.loss=cross_entropy (fcn3's last layer is then linear, without its LeakyReLU), bias: true on every layer
    outputs: int = 1
    bias: bool = False
    # weights: default (PyTorch's) | normal (N(0, init_std^2), biases 0: the paper's utils.weight_init); models/init.py
    init: str = "default"
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if self.outputs < 1:
            raise ConfigError(f"model.outputs must be >= 1, got {self.outputs}")
        check_init(self.init, self.init_std)


@dataclass
class CNN6dOptions(PaperModelOptions):
    name: str = "cnn6d"


@dataclass
class FCN3Options(PaperModelOptions):
    name: str = "fcn3"
    in_channels: int = 1
    image_size: int = 28


def cnn6(options: PaperModelOptions | None = None, /, **overrides: Any) -> SequentialNet:
    """CNN6: six LeakyReLU convs and a single-logit linear head (CIFAR-10 in the paper)."""
    o = build_options(PaperModelOptions, options, overrides)
    net = build_from_specs(o.name, (o.in_channels, o.image_size, o.image_size), _cnn6_specs(36, o))
    return initialize(net, o.init, o.init_std)


def cnn6d(options: CNN6dOptions | None = None, /, **overrides: Any) -> SequentialNet:
    """CNN6-d: CNN6 with a 20-channel conv2, which makes conv2's input under-determined."""
    o = build_options(CNN6dOptions, options, overrides)
    net = build_from_specs(o.name, (o.in_channels, o.image_size, o.image_size), _cnn6_specs(20, o))
    return initialize(net, o.init, o.init_std)


def fcn3(options: FCN3Options | None = None, /, **overrides: Any) -> SequentialNet:
    """FCN3: 784-1000-100-1 on MNIST in the paper; LeakyReLU after every layer, the output included."""
    o = build_options(FCN3Options, options, overrides)
    head = "leaky_relu" if o.outputs == 1 else "identity"  # softmax logits stay linear
    widths = ((1000, "leaky_relu"), (100, "leaky_relu"), (o.outputs, head))
    specs = [LayerSpec("linear", n, activation=a, negative_slope=o.negative_slope, bias=o.bias) for n, a in widths]
    return initialize(build_from_specs(o.name, (o.in_channels, o.image_size, o.image_size), specs), o.init, o.init_std)
