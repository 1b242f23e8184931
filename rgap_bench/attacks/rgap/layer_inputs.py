"""What a layer below the head is given by the layer above: its pre-activation, its error k and its live rows.

Below a ReLU, a dead output (x_{i+1} = 0) only says z_i <= 0: its weight row is dropped and k_i is 0 there
(`_live_outputs` decides which; the solvers honour the mask `LayerProblem.alive`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rgap_bench.attacks.rgap.layers import BiasCheck, RGAPLayer, bias_equations
from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.errors import RGapBenchError
from rgap_bench.linalg.activations import Rectifier


def _live_outputs(layer: RGAPLayer, x: Tensor, back_k: Tensor, options: RGAPOptions) -> Tensor:
    """The outputs of a ReLU layer that were not dead, from its reconstructed output x (attack.relu_dead_tol).

    A linear layer with a bias also has dL/db = k exactly (one sample), and k is exactly 0 at a dead unit: when the
    bias gradient has exact zeros (a clean update) they decide, a unit whose back-propagated error is itself 0
    falling back on x. Without exact zeros (noise from a defence, or nothing dead) x alone decides."""
    x = x.reshape(layer.out_shape)
    dead = layer.act.dead(x, options.relu_dead_tol)
    if layer.bias_grad is not None and not layer.is_conv:
        zero = layer.bias_grad.reshape(layer.out_shape) == 0
        if bool(zero.any()):
            dead = zero & (dead | (back_k.reshape(layer.out_shape) != 0))
    return ~dead


def error_and_rows(
    layer: RGAPLayer, back_k: Tensor, x_next: Tensor, options: RGAPOptions
) -> tuple[Tensor, Tensor, Tensor | None, BiasCheck | None]:
    """A layer below the head: its pre-activation z, its error k = dL/dz, the outputs that keep their weight rows
    (a ReLU layer; None otherwise) and its bias check.

    The one place that decides k: back-propagated through the activation, then, for a linear layer with a bias,
    the shared bias gradient (exactly k for one sample). Below a ReLU the same bias zeros decide the dead units
    (`_live_outputs`) and k stays 0 at each of them, so the mask and k agree also when a defence's noise leaves no
    exact zeros (x decides then). Pooled layers: x, z, k and the mask are all on the pooled outputs, since the
    activation follows the pooling."""
    x = x_next.reshape(layer.out_shape)
    alive = None
    if isinstance(layer.act, Rectifier):
        alive = _live_outputs(layer, x, back_k, options)
        if not bool(alive.any()):
            raise RGapBenchError(
                f"every ReLU output of layer {layer.index} ({layer.name}) is dead for this input: its weight rows are "
                "gone and the gradient of every layer below is zero, so nothing below it can be recovered; the "
                "input is hidden by the model, not by the attack (attack=ig or attack=dlg see the same zero gradient)"
            )
        z = torch.where(alive, layer.act.inverse(x), 0.0)
        k = back_k * alive
    else:
        z = layer.act.inverse(x)
        k = back_k * layer.act.derivative(z)
    k, bias = bias_equations(layer, k)
    if alive is not None:
        k = k * alive
    return z, k, alive, bias
