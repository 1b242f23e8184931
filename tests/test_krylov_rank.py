"""The matrix-free rank probe (block PCG + Rayleigh-Ritz) against the dense factorisation it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rgap_bench.attacks.rgap import RGAP, RGAPLayer, RGAPOptions
from rgap_bench.attacks.rgap.plan import LayerPlan
from rgap_bench.attacks.rgap.solvers import STRATEGIES, LayerProblem
from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.batched import block_normal, block_preconditioner
from rgap_bench.linalg.constraints import ConvGeometry
from rgap_bench.linalg.krylov import block_pcg, null_probe
from rgap_bench.linalg.operators import BlockJacobi, ConvSystem
from rgap_bench.linalg.spectrum import low_spectrum
from rgap_bench.models import cnn6

DTYPE = torch.float64


def conv_system(out_channels: int, size: int, stride: int = 1, with_z: bool = True, seed: int = 0):
    """A conv 2>out k3 p1 layer's scaled system, its true input and the layer record."""
    gen = torch.Generator().manual_seed(seed)
    op = nn.Conv2d(2, out_channels, 3, stride=stride, padding=1, bias=False).to(DTYPE)
    with torch.no_grad():
        op.weight.copy_(torch.randn(op.weight.shape, dtype=DTYPE, generator=gen))
    weight = op.weight.detach()
    x = torch.rand(2, size, size, dtype=DTYPE, generator=gen)
    z = F.conv2d(x[None], weight, stride=stride, padding=1)[0]
    k = torch.randn(z.shape, dtype=DTYPE, generator=gen)
    grad = torch.nn.grad.conv2d_weight(x[None], weight.shape, k[None], stride=stride, padding=1)
    geom = ConvGeometry((2, size, size), (3, 3), (stride, stride), (1, 1))
    system = ConvSystem(weight, k, grad, z if with_z else None, geom)
    layer = RGAPLayer(1, "blocks.1.op.weight", op, PiecewiseLinear(0.2), (2, size, size), tuple(z.shape), grad)
    return system, x, LayerProblem(layer, weight, k, z, system)


@pytest.mark.parametrize(
    ("out_channels", "size", "stride", "with_z"), [(6, 6, 1, True), (2, 8, 1, True), (3, 9, 2, True), (1, 6, 1, False)]
)
def test_block_operators_equal_the_single_vector_ones(out_channels, size, stride, with_z):
    system, _, _ = conv_system(out_channels, size, stride, with_z)
    pre = BlockJacobi(system)
    columns = torch.randn(system.shape[0] * size * size, 3, dtype=DTYPE)
    normal, precondition = block_normal(system)(columns), block_preconditioner(pre)(columns)
    for j in range(3):
        vec = columns[:, j].reshape(system.shape)
        assert torch.allclose(normal[:, j], system.normal(vec).reshape(-1), rtol=1e-12, atol=1e-12)
        assert torch.allclose(precondition[:, j], pre(vec).reshape(-1), rtol=1e-10, atol=1e-12)
    assert {BlockJacobi(conv_system(6, 6)[0]).mode, BlockJacobi(conv_system(2, 8)[0]).mode} == {"direct", "woodbury"}


@pytest.mark.parametrize("masked", [False, True])
def test_block_normal_follows_pooled_weight_rows_and_dead_unit_masks(masked):
    """A pooled conv (weight rows through the combined filter, gradient rows through P^T k) with or without a ReLU
    mask on its pooled outputs: the batched operator must apply the same system as `ConvSystem.normal`."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 2, 3, 3, dtype=DTYPE, generator=gen)
    geom = ConvGeometry((2, 8, 8), (3, 3), (1, 1), (1, 1))
    k = torch.randn(4, 4, 4, dtype=DTYPE, generator=gen)  # the pooled error (8x8 outputs, pool 2)
    z = torch.randn(4, 4, 4, dtype=DTYPE, generator=gen)
    grad = torch.randn(weight.shape, dtype=DTYPE, generator=gen)
    alive = (torch.rand(4, 4, 4, generator=gen) > 0.4) if masked else None
    system = ConvSystem(weight, k, grad, z, geom, pool=2, alive=alive)
    columns = torch.randn(2 * 8 * 8, 3, dtype=DTYPE, generator=gen)
    normal = block_normal(system)(columns)
    for j in range(3):
        expected = system.normal(columns[:, j].reshape(system.shape)).reshape(-1)
        assert torch.allclose(normal[:, j], expected, rtol=1e-12, atol=1e-12)


def test_block_pcg_reaches_each_columns_tolerance_and_keeps_converged_columns():
    system, _, _ = conv_system(2, 8)
    apply, pre = block_normal(system), block_preconditioner(BlockJacobi(system))
    rhs = apply(torch.randn(128, 3, dtype=DTYPE))
    tol = torch.tensor([1e-12, 1e-4, 1e-8], dtype=DTYPE)
    result = block_pcg(apply, rhs, pre, tol=tol, max_iter=2000)
    true_rel = (rhs - apply(result.x)).norm(dim=0) / rhs.norm(dim=0)
    assert bool((result.residual_rel <= tol).all())
    assert torch.allclose(true_rel, result.residual_rel, rtol=1e-3, atol=1e-13)
    assert float(true_rel[1]) > 1e-9  # the loose column left the block early: it did not keep improving


@pytest.mark.parametrize(("out_channels", "with_z"), [(1, False), (2, True)])
def test_probe_rank_and_null_space_agree_with_the_dense_factorisation(out_channels, with_z):
    """Gradient rows alone (1 filter, 9 rows per channel for 36 pixels) leave 54 directions free; a conv 2>2 with
    its weight rows is full rank. The probe finds what the shifted Cholesky of the dense matrix finds."""
    system, _, _ = conv_system(out_channels, 6, with_z=with_z)
    dense = low_spectrum(system.dense_normal(), 1e-10, null_hint=60)
    apply, pre = block_normal(system), block_preconditioner(BlockJacobi(system))
    n = 72
    deficiency = n - dense.rank
    probes = torch.randn(n, deficiency + 2, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    solved = block_pcg(apply, apply(probes), pre, tol=1e-12, max_iter=2000).x
    top = float(torch.linalg.eigvalsh(system.dense_normal())[-1])
    probe = null_probe(apply, probes, solved, 1e-10 * top)
    assert probe.deficiency == deficiency == (54 if not with_z else 0)
    if deficiency:
        dense_null = dense.null_basis
        lost = dense_null - probe.null_basis @ (probe.null_basis.T @ dense_null)
        assert float(lost.norm()) < 1e-6  # the same subspace
        assert float(probe.residuals[:deficiency].max()) < 1e-8 * top
    else:
        assert probe.lambda_min > 1e-10 * top and probe.lambda_min_residual is not None


def test_krylov_strategy_solves_and_certifies_a_full_rank_layer_like_the_dense_path():
    _, x_true, problem = conv_system(2, 8)  # K is 18 x 64: the gradient rows alone prove nothing
    plan = LayerPlan("krylov", want_rank=True)
    krylov = STRATEGIES["krylov"](problem, plan, RGAPOptions())
    dense = STRATEGIES["dense"](problem, LayerPlan("dense", want_rank=True), RGAPOptions())
    assert krylov.rank == dense.rank == x_true.numel() and krylov.null_basis is None
    assert krylov.rank_method == "krylov probe" and dense.rank_method == "dense"
    assert "full rank" in krylov.note and "rcond" in krylov.note
    assert torch.allclose(krylov.x, x_true, atol=1e-7) and krylov.residual_rel < 1e-8


def test_krylov_strategy_falls_back_to_dense_when_the_probe_comes_back_null():
    _, _, problem = conv_system(1, 6, with_z=False)  # 54 null directions, none predicted: 1 probe, all null
    solve = STRATEGIES["krylov"](problem, LayerPlan("krylov", want_rank=True), RGAPOptions())
    assert solve.solver.startswith("dense") and solve.rank == 72 - 54 and "dense fallback" in solve.note


def test_rank_auto_certifies_cnn6_without_a_dense_matrix(make_update, photo_batch, psnr, monkeypatch):
    """CNN6 at 16x16: conv1 is not proven by its gradient rows; its weight rows' symbol (or the probe, where no
    symbol bound holds) certifies it full rank (the dense rank agrees) and the dense path is never called."""
    import rgap_bench.attacks.rgap.solvers.krylov as krylov_module

    torch.manual_seed(0)
    model = cnn6(image_size=16)
    batch = photo_batch(image_size=16)
    update = make_update(model, batch)
    exact = RGAP(rank="exact")(model, update)

    def no_dense(*args, **kwargs):
        raise AssertionError("the dense path was called")

    monkeypatch.setattr(krylov_module, "solve_dense", no_dense)
    auto = RGAP(rank="auto")(model, update)
    probed = [r for r in auto.layers if r.rank_method in ("krylov probe", "weight-row symbol bound")]
    assert len(probed) >= 1
    for report in probed:
        assert report.rank == exact.layers[report.index].rank == report.unknowns
        assert report.status == "exact" and "full rank" in report.note
    assert psnr(auto.inputs, batch.inputs) >= 60
