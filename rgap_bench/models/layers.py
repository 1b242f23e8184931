"""Building blocks: one weight op (conv or linear), an optional average pooling, then one activation.

Keeping every model a flat list of such blocks is what lets R-GAP and the rank analysis walk a network
layer by layer without special cases per architecture. Pooling sits between the op and the activation
(`act(avgpool(op(x)))`, LeNet-5's subsampling layers): then every block is still a linear map followed by an
elementwise activation, so its weight rows stay linear in the input. Pooling after a non-linear activation would
average activated values, which no linear equation in x describes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rgap_bench.errors import ConfigError

ACTIVATIONS = ("leaky_relu", "identity", "relu", "tanh", "sigmoid")


@dataclass(frozen=True)
class LayerSpec:
    """Plain description of one block; `convnet` YAML lists and the paper models both reduce to these."""

    kind: str  # conv | linear
    out: int
    kernel: int = 3
    stride: int = 1
    padding: int = 0
    activation: str = "leaky_relu"
    negative_slope: float = 0.2
    bias: bool = False
    pool: int = 1  # conv only: average pooling, kernel = stride = pool, on the op's output before the activation


def make_activation(name: str, negative_slope: float = 0.2) -> nn.Module:
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    if name == "identity":
        return nn.Identity()
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ConfigError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


def make_pool(pool: int | nn.Module) -> nn.Module:
    """The pooling slot of a block: nothing (`pool=1`), average pooling with kernel = stride = `pool`, or a module
    given as is (which `rgap_bench.models.checks` may refuse, e.g. max pooling)."""
    if isinstance(pool, nn.Module):
        return pool
    return nn.AvgPool2d(pool) if pool > 1 else nn.Identity()


class Block(nn.Module):
    """`act(pool(op(x)))`; a linear op flattens a spatial input first. The pooling holds no parameters, so the
    update's tensor names (`blocks.<i>.op.weight`) are the same with or without it."""

    def __init__(self, op: nn.Conv2d | nn.Linear, act: nn.Module, pool: int | nn.Module = 1) -> None:
        super().__init__()
        self.op = op
        self.pool = make_pool(pool)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.op, nn.Linear) and x.dim() > 2:
            x = x.flatten(1)
        return self.act(self.pool(self.op(x)))


class SequentialNet(nn.Module):
    """A stack of `Block`s; returns the logits as a (batch, outputs) tensor."""

    def __init__(self, name: str, input_shape: tuple[int, int, int], blocks: list[Block]) -> None:
        super().__init__()
        self.name = name
        self.input_shape = tuple(input_shape)
        self.blocks = nn.ModuleList(blocks)
        self.block_input_shapes = self._trace_shapes()

    def _trace_shapes(self) -> list[tuple[int, ...]]:
        """Input shape (without batch) seen by every block, from one forward pass on meta tensors."""
        shapes = []
        x = torch.empty((1, *self.input_shape), device="meta")
        with torch.no_grad():
            for block in self.blocks:
                shapes.append(tuple(x.shape[1:]))
                op = block.op
                weight = op.weight.to("meta")
                if isinstance(op, nn.Linear):
                    x = torch.nn.functional.linear(x.flatten(1), weight)
                else:
                    x = block.pool(torch.nn.functional.conv2d(x, weight, stride=op.stride, padding=op.padding))
        return shapes

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)


def check_spec(i: int, name: str, spec: LayerSpec) -> None:
    """Refuse a layer spec torch would reject with an obscure error (or accept and then divide by zero)."""
    where = f"layer {i} of {name!r}"
    if spec.kind not in ("conv", "linear"):
        raise ConfigError(f"{where}: kind must be 'conv' or 'linear', got {spec.kind!r}")
    if spec.out < 1:
        raise ConfigError(f"{where}: out must be >= 1, got {spec.out}")
    if spec.kind == "conv" and (spec.kernel < 1 or spec.stride < 1 or spec.padding < 0):
        raise ConfigError(
            f"{where}: a conv needs kernel >= 1, stride >= 1 and padding >= 0, got kernel {spec.kernel}, "
            f"stride {spec.stride}, padding {spec.padding}"
        )
    if spec.pool < 1 or (spec.pool > 1 and spec.kind != "conv"):
        raise ConfigError(
            f"{where}: pool must be >= 1 and is for conv layers only (average pooling of the conv's output), got "
            f"pool {spec.pool} on a {spec.kind} layer"
        )
    if spec.activation not in ACTIVATIONS:
        raise ConfigError(f"{where}: unknown activation {spec.activation!r}; choose one of {', '.join(ACTIVATIONS)}")


def build_from_specs(name: str, input_shape: tuple[int, int, int], specs: list[LayerSpec]) -> SequentialNet:
    """Turn a list of specs into a network, checking sizes so a bad spec fails with a readable message."""
    if not specs:
        raise ConfigError(f"model {name!r} has no layers; give at least one layer spec, e.g. {{kind: linear, out: 1}}")
    channels, height, width = input_shape
    features = None  # set once a linear layer has flattened the input
    blocks = []
    for i, spec in enumerate(specs):
        check_spec(i, name, spec)
        if spec.kind == "conv":
            if features is not None:
                raise ConfigError(
                    f"layer {i} of {name!r}: a conv layer cannot follow a linear layer; put every conv layer first"
                )
            seen = f"{height}x{width}"
            height = (height + 2 * spec.padding - spec.kernel) // spec.stride + 1
            width = (width + 2 * spec.padding - spec.kernel) // spec.stride + 1
            if height < 1 or width < 1:
                raise ConfigError(
                    f"layer {i} of {name!r}: kernel {spec.kernel}, stride {spec.stride}, padding {spec.padding} "
                    f"leave no output pixels for its {seen} input; use a larger "
                    "data.image_size or a smaller kernel/stride"
                )
            if spec.pool > 1:
                if height < spec.pool or width < spec.pool:
                    raise ConfigError(
                        f"layer {i} of {name!r}: pool {spec.pool} is larger than the conv's {height}x{width} output; "
                        "use a smaller pool or a larger data.image_size"
                    )
                height, width = height // spec.pool, width // spec.pool
            op: nn.Conv2d | nn.Linear = nn.Conv2d(
                channels, spec.out, spec.kernel, spec.stride, spec.padding, bias=spec.bias
            )
            channels = spec.out
        else:
            in_features = features if features is not None else channels * height * width
            op = nn.Linear(in_features, spec.out, bias=spec.bias)
            features = spec.out
        blocks.append(Block(op, make_activation(spec.activation, spec.negative_slope), spec.pool))
    return SequentialNet(name, input_shape, blocks)
