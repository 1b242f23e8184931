"""A linear layer in closed form: its normal matrix is a*I + W^T W (`rgap_bench.linalg.operators.LinearSystem`)."""

from __future__ import annotations

from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.plan import LayerPlan
from rgap_bench.attacks.rgap.solvers.base import LayerProblem, LayerSolve
from rgap_bench.linalg.linear_system import LinearSystem
from rgap_bench.linalg.regularize import tikhonov_note


def solve_linear(problem: LayerProblem, plan: LayerPlan, options: RGAPOptions) -> LayerSolve:
    layer = problem.layer
    weight, z = problem.live_weight_rows()  # a dead ReLU unit's k is 0 too: LinearSystem skips its gradient rows
    system = LinearSystem(
        weight, problem.k, layer.grad, z, options.scale_rows,
        regularize=options.regularize, noise_sigma=options.noise_sigma,
    )  # fmt: skip
    x, residual = system.solve()
    return LayerSolve(x.reshape(layer.in_shape), residual, "direct-linear", note=tikhonov_note(system.choice))
