"""The recursion for one (label, root) hypothesis: top-down over the blocks, each layer solved from the one above.

For each block below the head: k_i = (W_{i+1}^T k_{i+1}) * sigma'(z_i), z_i = sigma^-1(x_{i+1}), and the layer
input solves [gradient rows; weight rows] x_i = [dL/dW_i; z_i]. A layer whose system is rank-deficient is solved
with the conv below: by default through its weight rows composed with that conv (`deferred.py`), else (or where
that proves nothing) its null space is carried down and the conv below solves its own input together with the free
coefficients.

Below a ReLU, a dead output (x_{i+1} = 0) only says z_i <= 0: its weight row is dropped and k_i is 0 there
(`layer_inputs.py` decides which; the solvers honour the mask `LayerProblem.alive`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from rgap_bench.attacks.rgap.chain import refinable, refine_image
from rgap_bench.attacks.rgap.deferred import DeferredLayer, conv_system, defer, defers, solve_below, without_bias
from rgap_bench.attacks.rgap.layer_inputs import error_and_rows
from rgap_bench.attacks.rgap.layers import BiasCheck, RGAPLayer, back_propagate, bias_equations
from rgap_bench.attacks.rgap.noise_gate import noisy
from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.pattern import ROBUST_ROUNDS, PatternFit, filter_residuals, filter_weights, refit_rounds
from rgap_bench.attacks.rgap.plan import LayerPlan, plan_layer
from rgap_bench.attacks.rgap.report import below_open, completed_below, layer_report
from rgap_bench.attacks.rgap.solvers import FACTORED, STRATEGIES, LayerProblem, LayerSolve, solve_joint
from rgap_bench.attacks.rgap.start import HeadStart
from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.resources import cpu_threads, solve_threads
from rgap_bench.linalg.smoothness import smooth_solve
from rgap_bench.types import LayerReport, Reconstruction


def _solve_layer(layer: RGAPLayer, k: Tensor, z: Tensor, options: RGAPOptions, dtype: torch.dtype,
                 alive: Tensor | None = None, grad_weight: Tensor | None = None) -> tuple:  # fmt: skip
    """One layer on its own: plan, solve, report; returns its input, its report and its null basis (if measured).
    `alive` (a ReLU layer): the outputs whose weight rows are kept; `grad_weight` (a conv, (F, 1, 1, 1)): a weight
    on each filter's gradient rows (`pattern.filter_weights`). A small layer's many tiny kernels (row scales, rank
    bounds, PCG, report) run fastest on one CPU thread, and two collapse when another process holds a core (on a
    busy 2-core machine two threads made CNN6's gradient-row bound 0.01 -> 2.5 s)."""
    start = time.perf_counter()
    weight = layer.op.weight.detach().to(dtype)
    threads = solve_threads(weight.device, layer.unknowns * weight[0].numel())  # small layers: 1 thread
    with cpu_threads(threads):
        problem, plan = plan_problem(layer, k, z, options, dtype, alive, weight, grad_weight)
    with cpu_threads(None if plan.strategy in FACTORED else threads):  # dense BLAS work: every thread
        solve = STRATEGIES[plan.strategy](problem, plan, options)
    with cpu_threads(threads):
        return conclude_layer(problem, plan, solve, options, start)


def plan_problem(layer: RGAPLayer, k: Tensor, z: Tensor, options: RGAPOptions, dtype: torch.dtype,
                 alive: Tensor | None, weight: Tensor,
                 grad_weight: Tensor | None = None) -> tuple[LayerProblem, LayerPlan]:  # fmt: skip
    """One layer's equations (a conv's as its matrix-free system) and its plan, before any solve."""
    z = without_bias(layer, z)
    system = None
    if layer.is_conv:
        system = conv_system(layer, k, z, options, weight, alive)
        if grad_weight is not None:
            system.grad_scale = system.grad_scale * grad_weight
    return LayerProblem(layer, weight, k, z, system, alive), plan_layer(layer, k, system, options, dtype)


def conclude_layer(problem: LayerProblem, plan: LayerPlan, solve: LayerSolve, options: RGAPOptions,
                   start: float) -> tuple:  # fmt: skip
    """After the solve: the image prior where it applies (a noisy image layer) and the report; returns the layer's
    input, its report and its null basis (if measured). `start`: when the layer's work began (its time_s)."""
    layer, k, system, alive = problem.layer, problem.k, problem.system, problem.alive
    prior_lam = None
    if _has_image_prior(layer, options) and system is not None and system.z is not None:
        prior_lam = options.image_prior_lam or 0.0
        if options.image_prior_lam != 0 and noisy(solve.residual_rel, options.noise_sigma):
            x, choice = smooth_solve(system, solve.x, tol=options.tol, max_iter=options.max_iter,
                                     lam_rel=options.image_prior_lam)  # fmt: skip
            solve = dataclasses.replace(solve, x=x.reshape(layer.in_shape), residual_rel=system.residual_rel(x))
            prior_lam = choice.lam_rel
    report = layer_report(layer, solve, plan, time.perf_counter() - start, alive=alive, k=k)
    if prior_lam is not None:
        report = dataclasses.replace(report, prior_lam=prior_lam)
    return solve.x, report, solve.null_basis


def _has_image_prior(layer: RGAPLayer, options: RGAPOptions) -> bool:
    """attack.image_prior=smooth applies to the bottom attack.prior_layers convs (`linalg/smoothness.py`)."""
    return options.image_prior == "smooth" and layer.index < options.prior_layers and layer.is_conv


def _with_prior(layer: RGAPLayer, k: Tensor, z: Tensor, solved: tuple, options: RGAPOptions, dtype: torch.dtype,
                alive: Tensor | None, grad_weight: Tensor | None) -> tuple:  # fmt: skip
    """The layer solved again under its prior once the refit settled k (with the same filter weights); a clean
    update keeps its plain solve and reports lam 0."""
    x, report, null_basis = solved
    if noisy(report.residual_rel, options.noise_sigma):  # a clean update skips GCV's solves
        x, prior, null_basis = _solve_layer(layer, k, z, options, dtype, alive, grad_weight)
        return x, dataclasses.replace(prior, note="; ".join(n for n in (report.note, prior.note) if n)), null_basis
    return x, dataclasses.replace(report, prior_lam=0.0), null_basis


def _robust_filters(layer: RGAPLayer, k: Tensor, z: Tensor, solved: tuple, options: RGAPOptions, dtype: torch.dtype,
                    alive: Tensor | None) -> tuple[tuple, Tensor | None]:  # fmt: skip
    """Re-solve a conv with its outlier filters' gradient rows down-weighted (`pattern.filter_weights`, up to
    `ROBUST_ROUNDS` reweightings); returns the solve and the weights (None: no filter was an outlier)."""
    weight = None
    first_report = solved[1]
    for _ in range(ROBUST_ROUNDS):
        update = filter_weights(filter_residuals(layer, k, solved[0], dtype))
        if update is None:
            break
        weight = update
        solved = _solve_layer(layer, k, z, options, dtype, alive, weight)
    if weight is None:
        return solved, None
    low = int((weight < 1).sum())
    note = f"{low} filters' gradient rows down-weighted (min weight {float(weight.min()):.2g})"
    x, report, null_basis = solved
    report = dataclasses.replace(report, note="; ".join(n for n in (first_report.note, note) if n))
    return (x, report, null_basis), weight


def _refit_pattern(layer: RGAPLayer, back_k: Tensor, z: Tensor, solved: tuple, options: RGAPOptions,
                   dtype: torch.dtype) -> Generator[PlainSolve, tuple, tuple[Tensor, tuple, PatternFit]]:  # fmt: skip
    """Refit the derivatives whose sign noise left in doubt (`pattern.refit_rounds`), noted in the report; its
    re-solves are asked of the walk's driver, its own work runs under the layer's thread cap."""
    weight = layer.op.weight
    keep_best = options.refit_best and layer.is_conv  # linear layers: see docs/noise.md ("Best round")
    steps = refit_rounds(layer, back_k, z, solved, lambda s: s[0], dtype, keep_best=keep_best)
    threads = solve_threads(weight.device, layer.unknowns * weight[0].numel())  # small layers: 1 thread
    try:
        with cpu_threads(threads):
            kk = next(steps)
        while True:
            again = yield PlainSolve(layer, kk, z, options, None)
            with cpu_threads(threads):
                kk = steps.send(again)
    except StopIteration as done:
        k, solved, fit = done.value
    if fit.doubtful:
        note = f"activation pattern: {fit.doubtful} signs in doubt, {fit.changed} derivatives refitted"
        x, report, null_basis = solved
        solved = (x, dataclasses.replace(report, note="; ".join(n for n in (report.note, note) if n)), null_basis)
    return k, solved, fit


def _refits_pattern(layer: RGAPLayer) -> bool:
    """The noise refit (`pattern.py`) re-derives k from the LeakyReLU slopes of an unpooled layer; a biased linear
    layer's k is its bias gradient and a ReLU's dead units are decided by `_live_outputs`, so neither is refitted."""
    if not isinstance(layer.act, PiecewiseLinear) or layer.pool != 1:
        return False
    return layer.is_conv or layer.bias_grad is None


def _carries_null_space(layers: list[RGAPLayer], layer: RGAPLayer, options: RGAPOptions) -> bool:
    """The joint solve needs a conv below (a linear layer is never deficient anyway) whose activation is an
    invertible piecewise-linear one: it searches that activation's pattern, which a smooth activation does not
    have; below a ReLU the pattern would also decide which weight rows exist, a search it does not do."""
    if not (options.carry_null_space and layer.index > 0):
        return False
    below = layers[layer.index - 1]
    return isinstance(below.op, nn.Conv2d) and isinstance(below.act, PiecewiseLinear)


def _with_bias(report: LayerReport, bias: BiasCheck | None) -> LayerReport:
    if bias is None:
        return report
    return dataclasses.replace(report, bias_equations=bias.equations, bias_residual_rel=bias.residual_rel)


@dataclass(frozen=True)
class PlainSolve:
    """A layer's plain solve (its first, or a pattern refit's), asked of a `walk`'s driver: `_solve_layer` alone."""

    layer: RGAPLayer
    k: Tensor
    z: Tensor
    options: RGAPOptions
    alive: Tensor | None


def recurse(layers: list[RGAPLayer], start: HeadStart, options: RGAPOptions, dtype: torch.dtype) -> Reconstruction:
    """The reconstruction under one hypothesis on the output layer (its label, dL/dz and pre-activation)."""
    steps = walk(layers, start, options, dtype)
    try:
        ask = next(steps)
        while True:
            ask = steps.send(_solve_layer(ask.layer, ask.k, ask.z, ask.options, dtype, ask.alive))
    except StopIteration as done:
        return done.value


def walk(layers: list[RGAPLayer], start: HeadStart, options: RGAPOptions,
         dtype: torch.dtype) -> Generator[PlainSolve, tuple, Reconstruction]:  # fmt: skip
    """`recurse`'s walk down the layers; it asks its driver for the plain solves (`PlainSolve`: the driver sends back
    what `_solve_layer` returns, `lockstep.py` batches them over walks), and does the others itself."""
    k, z = start.k, start.z
    reports: list[LayerReport] = []
    x_next: Tensor | None = None
    null_basis = None
    estimates: dict[int, tuple[Tensor, Tensor]] = {}  # each layer's solved input and its k (the chain refinement)
    pending: DeferredLayer | None = None  # a deficient conv waiting for the conv below (attack.joint=composed)
    for layer in reversed(layers):
        alive = None
        if layer is not layers[-1]:
            back_k = back_propagate(layers[layer.index + 1], k, dtype)
            if pending is not None:
                began = time.perf_counter()
                clean = not any(noisy(r.residual_rel or 0.0, options.noise_sigma) for r in reports)
                solved = solve_below(pending, layer, options, dtype, back_k, clean)
                if solved is None:  # no proof through the composed system: the deficient layer's null space
                    x_next, report, null_basis = _solve_layer(pending.layer, pending.k, pending.z, options, dtype)
                    reports.append(_with_bias(report, pending.bias))
                else:
                    upper, joint = solved
                    k = back_k * layer.act.derivative(layer.act.inverse(joint.x_upper))
                    k, bias = bias_equations(layer, k)
                    lower = _with_bias(layer_report(layer, joint, None, time.perf_counter() - began), bias)
                    reports += [completed_below(_with_bias(upper, pending.bias), lower), lower]
                    x_next, pending = joint.x, None
                    continue
                pending = None
            if null_basis is not None:
                began = time.perf_counter()
                joint = solve_joint(layer, back_k, x_next, null_basis, options, dtype)
                x_next, null_basis = joint.x, None
                k = back_k * layer.act.derivative(layer.act.inverse(joint.x_upper))
                k, bias = bias_equations(layer, k)
                lower = _with_bias(layer_report(layer, joint, None, time.perf_counter() - began), bias)
                reports[-1] = completed_below(reports[-1], lower)
                reports.append(lower)
                continue
            z, k, alive, bias = error_and_rows(layer, back_k, x_next, options)
            if defers(layers, layer, options, alive):
                pending = defer(layer, k, z, options, bias)  # solved with the conv below, reported then
                continue
        else:
            k, bias = bias_equations(layer, k)
        refits = x_next is not None and options.refit_pattern and _refits_pattern(layer)
        # the refit judges doubt by the misfit of z and W x, which a prior's smoothing would inflate: the refit
        # solves plainly and the prior comes after it, once the pattern is settled
        plain = dataclasses.replace(options, image_prior="none") if refits else options
        solved = yield PlainSolve(layer, k, z, plain, alive)
        if refits:
            k, solved, fit = yield from _refit_pattern(layer, back_k, z, solved, plain, dtype)
            grad_weight = None
            if options.robust_filters and layer.is_conv and fit.doubtful:  # a clean pattern: k has no outliers
                solved, grad_weight = _robust_filters(layer, k, z, solved, plain, dtype, alive)
            if _has_image_prior(layer, options):
                solved = _with_prior(layer, k, z, solved, options, dtype, alive, grad_weight)
        x_next, report, null_basis = solved
        estimates[layer.index] = (x_next, k)
        if not _carries_null_space(layers, layer, options):
            null_basis = None
        reports.append(_with_bias(report, bias))
    reports = below_open(reports[::-1])
    if options.chain_refine and refinable(layers, reports):
        x_next, reports = refine_image(layers, estimates, reports)
    residuals = [r.residual_rel for r in reports if r.residual_rel is not None]
    image = x_next.reshape(1, *layers[0].in_shape).float().cpu()
    residual = float(np.mean(residuals))
    violation = float((image - image.clamp(0, 1)).abs().mean())
    return Reconstruction(
        inputs=image,
        labels=torch.tensor([start.label]),
        layers=reports,
        residual_rel=residual,
        range_violation=violation,
        info={"label": start.label, **start.info, "mean_residual_rel": residual, "range_violation": violation},
    )
