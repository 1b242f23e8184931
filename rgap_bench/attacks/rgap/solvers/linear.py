"""A linear layer in closed form: its normal matrix is a*I + W^T W (`rgap_bench.linalg.operators.LinearSystem`).

On a noisy one-sample update the gradient's rank-one structure decides the input instead (`attack.rank_one`,
`linalg/rank_one.py`): the plain solve runs first, and its residual says whether the update is noisy at all."""

from __future__ import annotations

from rgap_bench.attacks.rgap.noise_gate import noisy
from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.plan import LayerPlan
from rgap_bench.attacks.rgap.solvers.base import LayerProblem, LayerSolve
from rgap_bench.linalg.linear_system import LinearSystem
from rgap_bench.linalg.rank_one import rank_one_input
from rgap_bench.linalg.regularize import tikhonov_note


def solve_linear(problem: LayerProblem, plan: LayerPlan, options: RGAPOptions) -> LayerSolve:
    layer = problem.layer
    weight, z = problem.live_weight_rows()  # a dead ReLU unit's k is 0 too: LinearSystem skips its gradient rows
    system = LinearSystem(
        weight, problem.k, layer.grad, z, options.scale_rows,
        regularize=options.regularize, noise_sigma=options.noise_sigma,
    )  # fmt: skip
    x, residual = system.solve()
    note = tikhonov_note(system.choice)
    k = problem.k.reshape(-1)
    active = k != 0
    # one row has no spectrum to truncate (and its weight row is then the only other equation): the plain solve
    if options.rank_one and int(active.sum()) > 1 and noisy(residual, options.noise_sigma):
        fit = rank_one_input(layer.grad[active], k[active])
        if fit.converged:
            residual = system.residual_rel(fit.x, *system.scaled_weight_rows())
            note = f"rank-one gradient: direction from its top singular vector ({fit.iterations} power iterations, " \
                   f"noise beside it {fit.gap:.1e} of sigma_1)"  # fmt: skip
            return LayerSolve(fit.x.reshape(layer.in_shape), residual, "rank-one-linear", note=note)
        note = "; ".join(n for n in (note, f"rank-one fit not converged in {fit.iterations} power iterations") if n)
    return LayerSolve(x.reshape(layer.in_shape), residual, "direct-linear", note=note)
