"""R-GAP's plan names one solver per layer, and every solver strategy recovers the same layer input."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rgap_bench.attacks.rgap.plan as plan_module
import rgap_bench.attacks.rgap.solvers.joint as joint_module
from rgap_bench.attacks.rgap import RGAP, RGAPLayer, RGAPOptions, plan_layer
from rgap_bench.attacks.rgap.solvers import STRATEGIES, LayerProblem, LayerSolve
from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.operators import ConvSystem
from rgap_bench.linalg.resources import DenseMemory
from rgap_bench.models import build_convnet, fcn3

DTYPE = torch.float64


def conv_problem(out_channels: int = 6, size: int = 6, seed: int = 0) -> tuple[LayerProblem, torch.Tensor]:
    """A conv 2>out k3 p1 layer whose true input is known: the gradient and z are computed from it."""
    gen = torch.Generator().manual_seed(seed)
    op = nn.Conv2d(2, out_channels, 3, padding=1, bias=False).to(DTYPE)
    with torch.no_grad():
        op.weight.copy_(torch.randn(op.weight.shape, dtype=DTYPE, generator=gen))
    x = torch.rand(2, size, size, dtype=DTYPE, generator=gen)
    k = torch.randn(out_channels, size, size, dtype=DTYPE, generator=gen)
    weight = op.weight.detach()
    z = F.conv2d(x[None], weight, padding=1)[0]
    grad = torch.nn.grad.conv2d_weight(x[None], weight.shape, k[None], padding=1)
    layer = RGAPLayer(1, "blocks.1.op.weight", op, PiecewiseLinear(0.2), (2, size, size), tuple(z.shape), grad)
    return LayerProblem(layer, weight, k, z, ConvSystem(weight, k, grad, z, layer.geometry)), x


def linear_problem(k_zero: bool = False, seed: int = 0) -> tuple[LayerProblem, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    op = nn.Linear(20, 5, bias=False).to(DTYPE)
    x = torch.rand(20, dtype=DTYPE, generator=gen)
    k = torch.zeros(5, dtype=DTYPE) if k_zero else torch.randn(5, dtype=DTYPE, generator=gen)
    weight = op.weight.detach()
    grad, z = torch.outer(k, x), weight @ x
    layer = RGAPLayer(2, "blocks.2.op.weight", op, PiecewiseLinear(1.0), (20,), (5,), grad)
    return LayerProblem(layer, weight, k, z, None), x


def plan(problem: LayerProblem, **options) -> plan_module.LayerPlan:
    return plan_layer(problem.layer, problem.k, problem.system, RGAPOptions(**options), DTYPE)


@pytest.mark.parametrize("strategy", ["pcg", "dense", "explicit-dense", "explicit-sparse", "lstsq"])
def test_every_conv_strategy_recovers_the_layer_input(strategy):
    problem, x_true = conv_problem()
    layer_plan = plan_module.LayerPlan(strategy, want_rank=strategy != "pcg")
    solve = STRATEGIES[strategy](problem, layer_plan, RGAPOptions())
    assert isinstance(solve, LayerSolve) and solve.x.shape == x_true.shape
    assert torch.allclose(solve.x, x_true, atol=1e-7)
    assert solve.residual_rel < 1e-8
    if strategy in ("dense", "explicit-dense"):  # the factorisations that measure the rank
        assert solve.rank == x_true.numel() and solve.null_basis is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        solve.x = x_true  # a solve is a record: the recursion cannot change it behind the report's back


@pytest.mark.parametrize("strategy", ["direct-linear", "explicit-dense", "explicit-sparse", "lstsq"])
def test_every_linear_strategy_recovers_the_layer_input(strategy):
    problem, x_true = linear_problem()
    solve = STRATEGIES[strategy](problem, plan_module.LayerPlan(strategy, want_rank=False), RGAPOptions())
    assert torch.allclose(solve.x, x_true, atol=1e-9)


def test_plan_of_a_conv_layer_follows_the_options():
    problem, _ = conv_problem(out_channels=2, size=8)  # K is 18 x 64: the gradient rows alone prove nothing
    assert plan(problem, rank="off") == plan_module.LayerPlan("pcg", want_rank=False)
    exact = plan(problem, rank="exact")
    assert (exact.strategy, exact.want_rank, exact.known_rank, exact.certificate) == ("dense", True, None, None)
    assert plan(problem).strategy == "krylov"  # rank=auto, 128 unknowns <= rank_max_unknowns, no null predicted
    assert plan(problem, rank_max_unknowns=100).strategy == "pcg"
    assert plan(problem, solver="iterative", rank="exact").strategy == "pcg"
    assert plan(problem, solver="sparse").strategy == "explicit-sparse"
    assert plan(problem, solver="lstsq").strategy == "lstsq"


def test_plan_skips_the_dense_path_when_the_gradient_rows_prove_full_rank():
    problem, _ = conv_problem()  # K is 54 x 36: tall, full column rank
    proven = plan(problem)
    assert proven.certificate is not None and proven.certificate > RGAPOptions().rcond
    assert (proven.strategy, proven.want_rank, proven.known_rank) == ("pcg", False, 72)


def test_plan_of_a_linear_layer():
    problem, _ = linear_problem()
    assert plan(problem) == plan_module.LayerPlan("direct-linear", want_rank=False, known_rank=20)
    assert plan(problem, solver="dense").strategy == "explicit-dense"
    unknown, _ = linear_problem(k_zero=True)  # no active gradient row: the weight rows alone decide
    assert plan(unknown) == plan_module.LayerPlan("direct-linear", want_rank=True)


def test_plan_falls_back_to_pcg_when_the_dense_matrices_would_not_fit(monkeypatch, caplog):
    problem, _ = conv_problem(out_channels=2, size=8)
    monkeypatch.setattr(plan_module, "dense_memory", lambda n, dtype, device: DenseMemory(8e12, 4e9))
    monkeypatch.setattr(RGAPLayer, "predicted_deficiency", lambda self: 3)  # a null space: the dense path's case
    with caplog.at_level(logging.WARNING, logger="rgap_bench.attacks.rgap"):
        assert plan(problem) == plan_module.LayerPlan("pcg", want_rank=False)
        assert plan(problem, rank="exact").strategy == "dense"  # asked for explicitly: no fallback
    assert "needs ~8000.0 GB, 4.0 GB are free" in caplog.text
    monkeypatch.setattr(RGAPLayer, "predicted_deficiency", lambda self: 0)
    assert plan(problem).strategy == "krylov"  # matrix-free: no memory to check


def test_rank_known_before_the_solve_is_reported_by_every_solver(make_update, photo_batch):
    """FCN3's layers are determined by their gradient rows: the reference solver reports that rank too."""
    torch.manual_seed(0)
    model = fcn3(in_channels=3, image_size=8)
    rec = RGAP(rank="auto", solver="sparse")(model, make_update(model, photo_batch(image_size=8)))
    assert [layer.rank for layer in rec.layers] == [layer.unknowns for layer in rec.layers]
    assert {layer.solver for layer in rec.layers} == {"sparse-lu"}


def test_scale_rows_reaches_the_joint_null_space_solve(monkeypatch, make_update, photo_batch):
    seen = []
    real = joint_module.solve_through_null_space

    def recording(*args, **kwargs):
        seen.append(kwargs["scale_rows"])
        return real(*args, **kwargs)

    monkeypatch.setattr(joint_module, "solve_through_null_space", recording)
    torch.manual_seed(0)
    model = build_convnet(
        [
            {"kind": "conv", "out": 8, "kernel": 3, "stride": 1, "padding": 1},
            {"kind": "conv", "out": 2, "kernel": 3, "stride": 2, "padding": 1},
            {"kind": "linear", "out": 1, "activation": "identity"},
        ],
        in_channels=1,
        image_size=8,
    )
    update = make_update(model, photo_batch(image_size=8, channels=1))
    for scale_rows in (True, False):
        rec = RGAP(rank="exact", scale_rows=scale_rows)(model, update)
        assert rec.layers[0].solver == "joint-null-space"
    assert seen == [True, False]
