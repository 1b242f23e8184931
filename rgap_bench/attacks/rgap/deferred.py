"""A rank-deficient conv left unsolved until the conv below it, which solves both at once (attack.joint=composed).

The recursion hands the deficient layer's scaled system down instead of a solution; the conv below solves its own
input through it (`composed.py`) and the deficient layer's input is that solution's forward pass. Its rank is not
factorised: the counting bound (`rank.counts`, rows that can be independent) caps it, and that is what its record
reports; the joint solve's proof of full rank below is what makes the pair exact.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rgap_bench.attacks.rgap.composed import solve_composed
from rgap_bench.attacks.rgap.layers import BiasCheck, RGAPLayer
from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.report import layer_report
from rgap_bench.attacks.rgap.solvers.base import LayerSolve
from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.operators import ConvSystem
from rgap_bench.types import LayerReport

log = logging.getLogger(__name__)


@dataclass
class DeferredLayer:
    """A deficient conv waiting for the conv below: its scaled system (float64) and when its turn began."""

    layer: RGAPLayer
    system: ConvSystem
    k: Tensor  # its error and pre-activation, for the null-space route should the composed system fail
    z: Tensor
    bias: BiasCheck | None
    began: float


def without_bias(layer: RGAPLayer, z: Tensor) -> Tensor:
    """The weight rows' right-hand side z - b (the gradient rows do not see the bias)."""
    if layer.op.bias is None:
        return z
    return z - layer.op.bias.detach().to(z.dtype).reshape(-1, *[1] * (z.dim() - 1))


def conv_system(layer: RGAPLayer, k: Tensor, z: Tensor, options: RGAPOptions, weight: Tensor,
                alive: Tensor | None = None) -> ConvSystem:  # fmt: skip
    """A conv layer's scaled system for the weight rows W x = z (`z` without the bias: `without_bias`)."""
    k_map = k.reshape(layer.out_shape)  # pooled layers: the pooled error (ConvSystem spreads it over P)
    grad = layer.grad.to(weight.dtype)
    return ConvSystem(weight, k_map, grad, z, layer.geometry, options.scale_rows, layer.pool, alive)


def defers(layers: list[RGAPLayer], layer: RGAPLayer, options: RGAPOptions, alive: Tensor | None) -> bool:
    """attack.joint=composed under rank=auto: a conv whose counting bound predicts a null space, above a conv with
    an invertible piecewise-linear activation and no pooling, all its weight rows alive (the composed system
    binds every unit below through its LeakyReLU branch) and at least as many of them as unknowns below (CNN6-d's
    conv2 has 1620 for conv1's 3072: the null-space route, whose gradient rows make up the difference)."""
    if options.joint != "composed" or options.rank != "auto" or not options.carry_null_space:
        return False
    if layer.index == 0 or not layer.is_conv or alive is not None or layer.unknowns > options.null_max_unknowns:
        return False
    below = layers[layer.index - 1]
    lower_ok = isinstance(below.op, nn.Conv2d) and isinstance(below.act, PiecewiseLinear) and below.pool == 1
    # the composed system has the deficient layer's weight rows only: fewer than the unknowns below cannot work
    enough_rows = math.prod(layer.out_shape) >= below.unknowns
    return lower_ok and enough_rows and layer.predicted_deficiency() > 0


def defer(layer: RGAPLayer, k: Tensor, z: Tensor, options: RGAPOptions, bias: BiasCheck | None) -> DeferredLayer:
    began = time.perf_counter()
    as64 = {"dtype": torch.float64}
    weight = layer.op.weight.detach().to(**as64)
    system = conv_system(layer, k.to(**as64), without_bias(layer, z.to(**as64)), options, weight)
    return DeferredLayer(layer, system, k, z, bias, began)


def solve_below(deferred: DeferredLayer, lower: RGAPLayer, options: RGAPOptions, dtype: torch.dtype,
                back_k: Tensor, clean: bool) -> tuple[LayerReport, LayerSolve] | None:  # fmt: skip
    """The conv below the deferred layer and the deferred layer itself: (the deferred layer's record, the lower
    layer's solve), or None when the composed system is singular or, on a clean update (`clean`: no noise announced
    and every layer above fits its equations), its full rank is not proven or its answer does not fit every
    equation; the recursion then takes the null-space route. `back_k`: the error back-propagated through the
    deferred layer."""
    as64 = {"dtype": torch.float64, "device": lower.op.weight.device}
    weight = lower.op.weight.detach().to(**as64)
    bias = None if lower.op.bias is None else lower.op.bias.detach().to(**as64)
    grad = lower.grad.to(**as64)
    back = back_k.to(**as64)

    def lower_system(slope: Tensor) -> ConvSystem:  # its gradient rows, for the error this pattern implies
        return ConvSystem(weight, back * slope, grad, None, lower.geometry, options.scale_rows)

    upper = deferred.system
    began = time.perf_counter()
    joint = solve_composed(weight, bias, lower.geometry, lower.act, upper, lower_system, options.rcond, clean)
    # on a clean update an unproven answer, or one that misfits the gradient rows (a wrong pattern: the search reads
    # the weight rows only), goes to the null-space route, whose search uses every equation; on a noisy update the
    # composed answer stands whatever its grade, as that route does no better there (relative noise 1e-4 on the
    # benchmark layer: 72 dB in 3 s against 45 dB in 800 s)
    if joint is None or (clean and (joint.rank is None or not joint.consistent)):
        why = "is singular" if joint is None else "has no proven answer that fits every equation"
        log.info("layer %d: the composed system with layer %d %s; factorising layer %d for its null space instead",
                 lower.index, deferred.layer.index, why, deferred.layer.index)  # fmt: skip
        return None
    x_upper = joint.x_upper.reshape(upper.shape)
    layer = deferred.layer
    deficiency = layer.predicted_deficiency()
    upper_solve = LayerSolve(
        x_upper.to(dtype),
        upper.residual_rel(x_upper),
        "joint-composed",
        rank=layer.unknowns - deficiency,
        rank_method="counting bound (rank at most)",
    )
    upper_report = layer_report(layer, upper_solve, None, began - deferred.began)
    settled = "settled" if joint.consistent else "not settled"
    if joint.rank is not None:
        settled += f", joint rank {joint.rank} of {joint.unknowns} (proven)"
    lower_solve = LayerSolve(
        joint.x_lower.to(dtype).reshape(lower.in_shape),
        joint.residual_rel,
        "joint-composed",
        iterations=joint.iterations,
        x_upper=x_upper.to(dtype).reshape(lower.out_shape),
        pattern_settled=joint.consistent,
        joint_rank=joint.rank,
        joint_unknowns=joint.unknowns,
        rank_method="sparse factor certificate" if joint.rank is not None else "",
        note=(
            f"solved with layer {layer.index} above through its weight rows (its >= {deficiency} undetermined "
            f"directions need no null space); activation pattern {settled} in {joint.iterations} rounds"
        ),
    )
    return upper_report, lower_solve
