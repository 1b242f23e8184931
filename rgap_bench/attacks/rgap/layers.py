"""R-GAP's view of a model: its checked blocks with the shared gradient of each, and how k flows between them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rgap_bench.errors import InvalidUpdateError
from rgap_bench.linalg.activations import Activation, PiecewiseLinear, Rectifier, Smooth
from rgap_bench.linalg.constraints import ConvGeometry
from rgap_bench.linalg.pooling import upsample_error
from rgap_bench.models.checks import check_model
from rgap_bench.rank.counts import conv_counts
from rgap_bench.types import ClientUpdate


@dataclass(frozen=True)
class RGAPLayer:
    """What the recursion needs of one block, read off the model and the update once and checked."""

    index: int
    name: str  # the update's tensor name, e.g. "blocks.3.op.weight"
    op: nn.Conv2d | nn.Linear
    act: Activation
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    grad: Tensor  # the shared weight gradient, in the solve dtype on the weights' device
    bias_grad: Tensor | None = None  # the shared bias gradient (a layer with a bias), same dtype and device
    pool: int = 1  # average pooling (kernel = stride) between the conv and the activation; out_shape is pooled

    @property
    def is_conv(self) -> bool:
        return isinstance(self.op, nn.Conv2d)

    @property
    def unknowns(self) -> int:
        return math.prod(self.in_shape)

    @property
    def geometry(self) -> ConvGeometry | None:
        """Index geometry of a conv layer's input (None for a linear layer)."""
        op = self.op
        if not isinstance(op, nn.Conv2d):
            return None
        return ConvGeometry(tuple(self.in_shape), tuple(op.kernel_size), tuple(op.stride), tuple(op.padding))

    def predicted_deficiency(self) -> int:
        """The counting bound's deficiency (rgap_bench.rank.counts): sizes the null-space search of the dense path."""
        op = self.op
        if not isinstance(op, nn.Conv2d):
            return 0
        counts = conv_counts(
            tuple(self.in_shape), op.out_channels, op.kernel_size, op.stride, op.padding, pool=self.pool
        )
        return max(counts.predicted_deficiency, 0)


def read_layers(model: nn.Module, update: ClientUpdate, dtype: torch.dtype) -> list[RGAPLayer]:
    """The model's blocks (`check_model` says why one cannot be attacked) with the update's gradient of each;
    raises `InvalidUpdateError` when a gradient is missing, misshapen or not finite."""
    blocks = check_model(model)
    if tuple(update.metadata.input_shape) != blocks[0].in_shape:
        raise InvalidUpdateError(
            f"the update is for inputs of shape {tuple(update.metadata.input_shape)}, the model takes "
            f"{blocks[0].in_shape}; it was made for another model or data set"
        )
    layers = []
    for block in blocks:
        op = block.op
        key = f"blocks.{block.index}.op.weight"
        grad = _read_tensor(update, key, op.weight, dtype)
        bias_grad = None
        if op.bias is not None:
            bias_grad = _read_tensor(update, f"blocks.{block.index}.op.bias", op.bias, dtype)
        act: Activation = PiecewiseLinear(block.slope) if block.slope else Rectifier()  # slope 0: a ReLU
        if block.smooth:
            act = Smooth(block.smooth)
        layers.append(
            RGAPLayer(block.index, key, op, act, block.in_shape, block.out_shape, grad, bias_grad, block.pool)
        )
    return layers


def _read_tensor(update: ClientUpdate, key: str, param: Tensor, dtype: torch.dtype) -> Tensor:
    """The update's gradient of one parameter, checked against it."""
    if key not in update.tensors:
        raise InvalidUpdateError(f"the update has no tensor {key!r}; it was made for another model")
    grad = update.tensors[key].detach().to(param.device, dtype)
    if grad.shape != param.shape:
        raise InvalidUpdateError(f"{key}: update shape {tuple(grad.shape)} != parameter {tuple(param.shape)}")
    if not torch.isfinite(grad).all():
        raise InvalidUpdateError(
            f"{key} contains NaN or Inf: the client's gradient diverged or a defence broke it; "
            "check the client loss and the defence parameters"
        )
    return grad


def back_propagate(upper: RGAPLayer, k_upper: Tensor, dtype: torch.dtype) -> Tensor:
    """dL/d(input of the upper layer) = W^T k (through a pooled conv: W^T P^T k), reshaped to the lower layer's
    output shape."""
    weight = upper.op.weight.detach().to(dtype)
    if isinstance(upper.op, nn.Linear):
        return (weight.T @ k_upper.reshape(-1)).reshape(upper.in_shape)
    k_full = upsample_error(k_upper.reshape(1, *upper.out_shape), upper.geometry.out_hw, upper.pool)
    grad_in = torch.nn.grad.conv2d_input(
        (1, *upper.in_shape),
        weight,
        k_full,
        upper.op.stride,
        upper.op.padding,
    )
    return grad_in[0]


def describe_op(op: nn.Conv2d | nn.Linear, pool: int = 1) -> str:
    """Short, readable layer label such as 'conv 3>12 k4 s2 p2', 'conv 1>6 k5 s1 p2 avgpool2' or 'linear 3200>1'."""
    if isinstance(op, nn.Linear):
        return f"linear {op.in_features}>{op.out_features}"
    kernel = "x".join(map(str, op.kernel_size)) if op.kernel_size[0] != op.kernel_size[1] else op.kernel_size[0]
    pooled = f" avgpool{pool}" if pool > 1 else ""
    return f"conv {op.in_channels}>{op.out_channels} k{kernel} s{op.stride[0]} p{op.padding[0]}{pooled}"


@dataclass(frozen=True)
class BiasCheck:
    """A layer's bias equations: one per output unit (linear) or channel (conv), on the error k = dL/dz, not on x."""

    equations: int
    residual_rel: float  # ||db(k) - db|| / ||db||: how well the recursion's k matched the shared bias gradient


def bias_equations(layer: RGAPLayer, k: Tensor) -> tuple[Tensor, BiasCheck | None]:
    """Check the recursion's `k` against the shared bias gradient and, for a linear layer, replace it.

    For one sample db = k for a linear layer (exact even when the layer above was approximate, so the layers below
    start from the client's own error), and db = sum over positions of k for a conv (pooled or not: P^T spreads
    each pooled error over its window with weight 1/p^2, so the sums agree); None for a layer without a bias."""
    if layer.bias_grad is None:
        return k, None
    db = layer.bias_grad.reshape(-1)
    predicted = k.reshape(-1) if not layer.is_conv else k.reshape(db.numel(), -1).sum(1)
    ref = float(db.norm())
    diff = float((predicted - db).norm())
    check = BiasCheck(db.numel(), diff / ref if ref > 0 else diff)
    return (db.reshape(k.shape) if not layer.is_conv else k), check
