"""Several independent recursions on one model walked down its layers together (`RGAP.attack_many`), so that each
conv layer's plain solves are one batched PCG over the samples (`solvers.iterative.solve_pcg_many`) instead of B.

Each recursion is `recursion.walk`, the same code `recurse` drives; only who does a layer's plain solves differs
(its first solve, and the re-solves of the activation-pattern refit, which float32 gradients trigger on clean
updates too: a few |z| fall inside the doubt band). Everything else (the plan's rank bounds, linear layers,
reports, the refit itself) runs per sample as it does alone. A recursion leaves the lockstep as soon as it needs
more than the plain path: a layer that is noisy (its residual above the noise floor, or noise announced),
rank-deficient or carries a null space down; its owner (the update) is then attacked on its own, so no answer
depends on whether it was batched beyond rounding. A deficient conv taken by the composed joint solve
(`deferred.py`) asks for no plain solve: each walk does that pair itself, inside the lockstep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from rgap_bench.attacks.rgap.layers import RGAPLayer
from rgap_bench.attacks.rgap.noise_gate import noisy
from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.recursion import PlainSolve, conclude_layer, plan_problem, walk
from rgap_bench.attacks.rgap.solvers import STRATEGIES
from rgap_bench.attacks.rgap.solvers.iterative import solve_pcg_many
from rgap_bench.attacks.rgap.start import HeadStart
from rgap_bench.linalg.resources import cpu_threads, solve_threads
from rgap_bench.types import Reconstruction


@dataclass(frozen=True)
class Job:
    """One recursion: the layers of its update, one hypothesis on the output layer, its options, and who owns it
    (its update: when one of an owner's recursions leaves the lockstep, all of them do)."""

    layers: list[RGAPLayer]
    start: HeadStart
    options: RGAPOptions
    owner: Hashable


def needs_alone(solved: tuple, noise_sigma: float | None) -> bool:
    """Whether a layer's plain solve calls for more than the plain path (noise refits, the prior, null spaces)."""
    _, report, null_basis = solved
    residual = report.residual_rel if report.residual_rel is not None else 0.0
    return null_basis is not None or bool(report.rank_deficiency) or noisy(residual, noise_sigma)


def recurse_many(jobs: list[Job], dtype: torch.dtype) -> list[Reconstruction | None]:
    """Every job's reconstruction, in order; None for a job that left the lockstep (`needs_alone`)."""
    walks = [walk(job.layers, job.start, job.options, dtype) for job in jobs]
    results: list[Reconstruction | None] = [None] * len(jobs)
    asks: dict[int, PlainSolve] = {}

    def advance(i: int, step: Callable[[], PlainSolve]) -> None:
        try:
            asks[i] = step()
        except StopIteration as done:
            results[i] = done.value

    for i, steps in enumerate(walks):
        advance(i, steps.__next__)
    while asks:
        # the walks go down together, top layer first; one batch shares one layer's weights (one model's layer)
        top = max(asks.values(), key=lambda ask: ask.layer.index).layer
        group = [i for i, ask in asks.items() if ask.layer.op is top.op]
        solved = solve_plain(top, [asks.pop(i) for i in group], dtype)
        left = {
            jobs[i].owner for i, s in zip(group, solved, strict=True) if needs_alone(s, jobs[i].options.noise_sigma)
        }
        for i, s in zip(group, solved, strict=True):
            if jobs[i].owner not in left:
                advance(i, lambda steps=walks[i], s=s: steps.send(s))
        for i, job in enumerate(jobs):
            if job.owner in left:
                walks[i].close()
                asks.pop(i, None)
                results[i] = None
    return results


def solve_plain(layer: RGAPLayer, asks: list[PlainSolve], dtype: torch.dtype) -> list[tuple]:
    """Plain solves of one layer for several walks: what `recursion._solve_layer` returns for each, the PCG
    layers with equal options solved as one batch; each report's time is its own setup plus its share of the
    batch."""
    weight = layer.op.weight.detach().to(dtype)
    setups = []
    with cpu_threads(solve_threads(weight.device, layer.unknowns * weight[0].numel())):  # small layers: 1 thread
        for ask in asks:
            began = time.perf_counter()
            problem, plan = plan_problem(ask.layer, ask.k, ask.z, ask.options, dtype, ask.alive, weight)
            setups.append((problem, plan, time.perf_counter() - began))
    options = asks[0].options
    batch = [
        j
        for j, (problem, plan, _) in enumerate(setups)
        if plan.strategy == "pcg" and problem.system is not None and problem.system.z is not None
        and asks[j].options == options
    ]  # fmt: skip
    solves, spent = {}, {}
    if batch:
        began = time.perf_counter()
        out = solve_pcg_many([setups[j][0] for j in batch], [setups[j][1] for j in batch], options)
        share = (time.perf_counter() - began) / len(batch)
        solves.update(zip(batch, out, strict=True))
        spent.update((j, share) for j in batch)
    results = []
    with cpu_threads(solve_threads(weight.device, layer.unknowns * weight[0].numel())):
        for j, (problem, plan, setup_s) in enumerate(setups):
            began = time.perf_counter()
            if j not in solves:
                solves[j] = STRATEGIES[plan.strategy](problem, plan, asks[j].options)
            start = began - setup_s - spent.get(j, 0.0)
            results.append(conclude_layer(problem, plan, solves[j], asks[j].options, start))
    return results
