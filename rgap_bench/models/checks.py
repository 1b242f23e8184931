"""Whether a model is a stack R-GAP's recursion can walk, with the reason when it is not.

One check, shared by the attack (before it reads any gradient) and the rank analysis (which reports the reason
next to its counts), so both say the same thing about the same model. It looks only at the model, never at an
update, and so lives with the models, below every attack.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rgap_bench.errors import UnsupportedModelError
from rgap_bench.models.layers import SequentialNet

SUPPORTED_LAYERS = (
    "nn.Conv2d (groups=1, dilation=1, zero padding, optionally followed by average pooling with kernel = stride) "
    "and nn.Linear, with or without bias"
)
SUPPORTED_ACTIVATIONS = "ReLU (not on the output layer), LeakyReLU with a slope >= 0, Identity, Sigmoid or Tanh"
# What a user can do instead when R-GAP cannot walk a model: the matching attacks only need autograd.
ALTERNATIVE = "or attack this model with gradient matching (attack=ig, attack=dlg), which needs no invertible layers"


@dataclass(frozen=True)
class CheckedBlock:
    """One block that passed: its weight op, its activation's negative slope (Identity: 1; ReLU: 0; None for a
    smooth activation, named by `smooth`) and its shapes."""

    index: int
    op: nn.Conv2d | nn.Linear
    slope: float | None
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    smooth: str | None = None  # sigmoid | tanh
    pool: int = 1  # average pooling (kernel = stride) between the conv and the activation; out_shape is pooled


SMOOTH = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}


def activation_slope(module: nn.Module, where: str) -> float | None:
    """The negative slope of a piecewise-linear activation (ReLU: 0, its dead units lose their equations; see
    `rgap_bench.linalg.activations.Rectifier`), or say why R-GAP cannot pass through it."""
    if isinstance(module, nn.Identity):
        return 1.0
    if isinstance(module, nn.ReLU):
        return 0.0
    if isinstance(module, nn.LeakyReLU) and module.negative_slope >= 0:
        return float(module.negative_slope)  # slope 0 is a ReLU
    if type(module) in SMOOTH:
        return None  # invertible on its range; CheckedBlock.smooth names it
    reason = {
        nn.LeakyReLU: "a LeakyReLU with a negative slope is not monotone, so its input cannot be read back",
    }.get(type(module), "R-GAP needs an invertible or piecewise-linear activation")
    raise UnsupportedModelError(
        f"{where}: activation {module.__class__.__name__} is not supported by R-GAP: {reason}. "
        f"Supported: {SUPPORTED_ACTIVATIONS}; {ALTERNATIVE}."
    )


# Layers R-GAP cannot invert, and why; named when a model that is not a SequentialNet contains one.
NOT_INVERTIBLE: dict[type[nn.Module], str] = {
    nn.MaxPool2d: "max pooling keeps one input per window and drops the others' equations",
    nn.AdaptiveMaxPool2d: "max pooling keeps one input per window and drops the others' equations",
    nn.BatchNorm1d: "batch norm in train mode mixes the samples of a batch through its statistics",
    nn.BatchNorm2d: "batch norm in train mode mixes the samples of a batch through its statistics",
    nn.Dropout: "active dropout zeroes units at random, so the client's pass cannot be replayed",
    nn.MultiheadAttention: "attention is not a linear map of its input followed by an elementwise activation",
}


def _foreign_model_reason(model: nn.Module) -> str:
    """Why R-GAP cannot walk a model that is not a SequentialNet: its first non-invertible layer, by name."""
    for name, module in model.named_modules():
        for kind, why in NOT_INVERTIBLE.items():
            if isinstance(module, kind):
                return (
                    f"layer {name!r} ({module.__class__.__name__}) is not supported by R-GAP: {why}. R-GAP walks a "
                    f"stack of conv/linear blocks (model=convnet or rgap_bench.models.SequentialNet); {ALTERNATIVE}"
                )
    return (
        f"R-GAP walks a stack of conv/linear blocks (model=convnet or rgap_bench.models.SequentialNet); got "
        f"{model.__class__.__name__}; {ALTERNATIVE}"
    )


def _not_invertible(module: nn.Module, where: str) -> None:
    """Refuse a layer R-GAP cannot invert that sits inside a block (as its op, pooling or activation), with why."""
    for kind, why in NOT_INVERTIBLE.items():
        if isinstance(module, kind):
            raise UnsupportedModelError(
                f"{where}: {module.__class__.__name__} is not supported by R-GAP: {why}. R-GAP supports "
                f"{SUPPORTED_LAYERS}; {ALTERNATIVE}"
            )


def _check_op(op: nn.Module, where: str) -> None:
    _not_invertible(op, where)
    if not isinstance(op, nn.Conv2d | nn.Linear):
        raise UnsupportedModelError(f"{where} is not supported; R-GAP supports {SUPPORTED_LAYERS}; {ALTERNATIVE}")
    if isinstance(op, nn.Conv2d) and (
        op.groups != 1 or tuple(op.dilation) != (1, 1) or op.padding_mode != "zeros" or isinstance(op.padding, str)
    ):
        raise UnsupportedModelError(f"{where}: R-GAP supports {SUPPORTED_LAYERS}; {ALTERNATIVE}")


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)


def pool_size(pool: nn.Module, op: nn.Module, where: str) -> int:
    """The pooling factor of a block's pooling slot: 1 for none, p for average pooling with kernel = stride = p
    (a fixed linear map of the conv's output); anything else is refused with the reason."""
    if isinstance(pool, nn.Identity):
        return 1
    _not_invertible(pool, where)
    if isinstance(pool, nn.AvgPool2d) and isinstance(op, nn.Conv2d):
        kernel, stride, padding = (_pair(v) for v in (pool.kernel_size, pool.stride or pool.kernel_size, pool.padding))
        plain = not pool.ceil_mode and pool.divisor_override is None and padding == (0, 0)
        if plain and kernel == stride and kernel[0] == kernel[1]:
            return int(kernel[0])
    raise UnsupportedModelError(
        f"{where}: pooling {pool} is not supported by R-GAP: it supports average pooling with kernel = stride, "
        f"no padding, on a conv's output (LayerSpec pool: p); {ALTERNATIVE}"
    )


def check_model(model: nn.Module) -> list[CheckedBlock]:
    """Every block of `model` as R-GAP sees it; raises `UnsupportedModelError` naming the first obstacle (layer
    kind, conv options, activation, then a head that is not a linear layer). A bias is fine: the weight rows
    read W x = z - b, the gradient rows do not see it. Whether the
    head fits the loss (one logit for the binary logistic loss, C >= 2 for cross-entropy) is the attack's check:
    the model alone does not say which loss trains it."""
    if not isinstance(model, SequentialNet):
        raise UnsupportedModelError(_foreign_model_reason(model))
    shapes = [*model.block_input_shapes, None]
    blocks = []
    for i, block in enumerate(model.blocks):
        where = f"layer {i} ({block.op.__class__.__name__})"
        _check_op(block.op, where)
        out_shape = tuple(shapes[i + 1]) if shapes[i + 1] is not None else (block.op.weight.shape[0],)
        pool = pool_size(getattr(block, "pool", nn.Identity()), block.op, where)
        _not_invertible(block.act, where)
        slope = activation_slope(block.act, where)
        smooth = SMOOTH.get(type(block.act))
        blocks.append(CheckedBlock(i, block.op, slope, tuple(shapes[i]), out_shape, smooth, pool))
    head = blocks[-1].op
    if not isinstance(head, nn.Linear):
        raise UnsupportedModelError(
            "R-GAP's output step needs an nn.Linear head (one logit for the binary logistic loss, one per class for "
            f"cross-entropy); the last layer is {head}; give the model a final {{kind: linear, out: ...}} layer, "
            f"{ALTERNATIVE}"
        )
    if blocks[-1].slope == 0.0:
        raise UnsupportedModelError(
            f"layer {blocks[-1].index}: R-GAP's output step inverts the head's activation, and a ReLU on the output "
            "layer hides every negative logit; give the model a final layer with activation identity (cross-entropy) "
            f"or leaky_relu (binary logistic), {ALTERNATIVE}"
        )
    return blocks


def unsupported_reason(model: nn.Module) -> str | None:
    """`check_model`'s message, or None when R-GAP can attack the model."""
    try:
        check_model(model)
    except UnsupportedModelError as exc:
        return str(exc)
    return None
