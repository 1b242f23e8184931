"""R-GAP: recursive closed-form reconstruction of a single input from its gradient (Zhu & Blaschko, ICLR 2021).

Top-down over the blocks: the output layer's scalar gives mu and k_d = dL/dz_d, its gradient row gives x_d; then
for each block below, z_i = sigma^-1(x_{i+1}), k_i = (W_{i+1}^T k_{i+1}) * sigma'(z_i), and the layer input solves
[gradient rows; weight rows] x_i = [dL/dW_i; z_i] in the least-squares sense.

The package, top to bottom: `attack` (the plugin: update checks, output-layer step, candidates), `recursion` (the
top-down loop and the null-space carrying), `layers` (the model and update read once), `plan` (which solver each
layer gets), `solvers` (one strategy per method, each returning a `LayerSolve`), `report` (the `LayerReport` of a
layer), `null_space` (the joint system's mathematics) and `options` (every option's default).
"""

from rgap_bench.attacks.rgap.attack import RGAP, choose_candidate, loss_scale
from rgap_bench.attacks.rgap.layers import RGAPLayer, describe_op, read_layers
from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.plan import LayerPlan, plan_layer
from rgap_bench.attacks.rgap.solvers import LayerSolve

__all__ = [
    "RGAP",
    "LayerPlan",
    "LayerSolve",
    "RGAPLayer",
    "RGAPOptions",
    "choose_candidate",
    "describe_op",
    "loss_scale",
    "plan_layer",
    "read_layers",
]
