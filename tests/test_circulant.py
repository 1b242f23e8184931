"""The circulant preconditioner (`linalg.circulant`): SPD, exact on the weight rows away from the border, the
gradient rows' symbol is their Fourier modes' Rayleigh quotient, and PCG with it keeps the least-squares solution."""

import math

import pytest
import torch
import torch.nn.functional as F

from rgap_bench.attacks.rgap import RGAP
from rgap_bench.linalg import circulant
from rgap_bench.linalg.circulant import CirculantPreconditioner
from rgap_bench.linalg.constraints import ConvGeometry
from rgap_bench.linalg.operators import ConvSystem
from rgap_bench.linalg.pcg import pcg
from rgap_bench.models import build_from_specs
from rgap_bench.models.layers import LayerSpec


def test_preconditioner_is_symmetric_positive_definite(conv_case, make_conv_system):
    system, _ = make_conv_system(*conv_case)
    pre = CirculantPreconditioner(system)
    gen = torch.Generator().manual_seed(4)
    x, y = (torch.randn(system.shape, dtype=torch.float64, generator=gen) for _ in range(2))
    assert float((pre(x) * y).sum()) == pytest.approx(float((x * pre(y)).sum()), rel=1e-10)
    assert float((pre(x) * x).sum()) > 0


@pytest.mark.parametrize(
    ("in_shape", "filters", "kernel", "stride", "padding"),
    [((2, 24, 24), 8, (4, 4), (2, 2), (2, 2)), ((2, 20, 18), 3, (3, 3), (1, 1), (1, 1))],
    ids=["full-strided", "same"],
)
def test_inverts_the_weight_rows_away_from_the_border(in_shape, filters, kernel, stride, padding):
    """Without gradient rows (k = 0) and with unit row scales the weight part W^T W is the circulant's on inputs
    that stay clear of the border, so the preconditioner undoes it exactly there."""
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(filters, in_shape[0], *kernel, dtype=torch.float64, generator=gen)
    geom = ConvGeometry(in_shape, kernel, stride, padding)
    x = torch.zeros(in_shape, dtype=torch.float64)
    x[:, 8:-8, 8:-8] = torch.randn(in_shape[0], in_shape[1] - 16, in_shape[2] - 16, dtype=torch.float64, generator=gen)
    z = F.conv2d(x[None], weight, stride=stride, padding=padding)[0]
    k = torch.zeros_like(z)
    system = ConvSystem(weight, k, torch.zeros_like(weight), z, geom, scale_rows=False)
    assert torch.allclose(CirculantPreconditioner(system)(system.normal(x)), x, atol=1e-9, rtol=0)
    bumped = x.clone()
    bumped[:, 0, 0] += 1.0  # at the border the approximation is only an approximation: the test can tell
    assert not torch.allclose(CirculantPreconditioner(system)(system.normal(bumped)), bumped, atol=1e-3)


def test_gradient_symbol_is_the_rayleigh_quotient_of_each_fourier_mode():
    """T. Chan's approximation of I (x) K^T K: e^H K^T K e for a Fourier mode e of one pixel phase on the polyphase
    grid, exact while k's support keeps every row inside the image."""
    in_shape, stride, padding = (1, 16, 16), (2, 2), (1, 1)
    gen = torch.Generator().manual_seed(6)
    weight = torch.randn(3, 1, 3, 3, dtype=torch.float64, generator=gen)
    geom = ConvGeometry(in_shape, (3, 3), stride, padding)
    k = torch.zeros(3, *geom.out_hw, dtype=torch.float64)
    k[:, 2:6, 3:6] = torch.randn(3, 4, 3, dtype=torch.float64, generator=gen)
    system = ConvSystem(weight, k, torch.zeros_like(weight), k.clone(), geom)  # scaled rows: grad_scale varies
    pre = CirculantPreconditioner(system)
    gh, gw = pre.grid
    symbol = pre._gradient_symbol(system, (gh, gw), gw // 2 + 1)
    qh, qw = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    rows, cols = stride[0] * qh - padding[0], stride[1] * qw - padding[1]  # phase (0, 0)
    for a, b in ((0, 0), (1, 0), (1, 1)):
        inside = (rows + a >= 0) & (rows + a < 16) & (cols + b >= 0) & (cols + b < 16)
        for i, j in ((0, 0), (2, 3), (5, 1)):
            mode = torch.exp(2j * math.pi * (i * qh.double() / gh + j * qw.double() / gw)) / math.sqrt(gh * gw)
            quotient = 0.0
            for part in (mode.real, mode.imag):
                x = torch.zeros(in_shape, dtype=torch.float64)
                x[0, (rows + a)[inside], (cols + b)[inside]] = part[inside]
                quotient += float((system.grad_rows(x) ** 2).sum())
            assert symbol[i, j, a * stride[1] + b] == pytest.approx(quotient, rel=1e-10)


def test_pcg_with_it_reaches_the_dense_least_squares_solution(conv_case, make_conv_system):
    """Under noise on z and on the gradient (an inconsistent system) PCG converges to the dense least-squares
    solution of the scaled system: the preconditioner changes the path, not the answer."""
    clean, _ = make_conv_system(*conv_case)
    gen = torch.Generator().manual_seed(7)
    z = clean.z + 1e-2 * torch.randn(clean.z.shape, dtype=torch.float64, generator=gen)
    grad = clean.grad + 1e-2 * torch.randn(clean.grad.shape, dtype=torch.float64, generator=gen)
    system = ConvSystem(clean.weight, clean.k, grad, z, clean.geom)
    n = math.prod(system.shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *system.shape)
    a = torch.cat(
        [
            torch.stack([system.grad_rows(e).reshape(-1) for e in eye], 1),
            torch.stack([system.weight_rows(e).reshape(-1) for e in eye], 1),
        ]
    )
    b = torch.cat([(system.grad * system.grad_scale).reshape(-1), (system.z * system.weight_scale).reshape(-1)])
    reference = torch.linalg.lstsq(a, b[:, None]).solution[:, 0].reshape(system.shape)
    result = pcg(system.normal, system.normal_rhs(), CirculantPreconditioner(system), tol=1e-13, max_iter=2000)
    assert torch.allclose(result.x, reference, atol=1e-10, rtol=0)


def _small_wide_net():
    """The "wide" net's first two convs at 16x16 (below the size threshold unless it is lowered)."""
    torch.manual_seed(0)
    specs = [
        LayerSpec("conv", 12, 4, 2, 2),
        LayerSpec("conv", 16, 3, 1, 1),
        LayerSpec("linear", 1, activation="identity"),
    ]
    return build_from_specs("wide", (3, 16, 16), specs)


def test_large_layers_take_it_and_keep_the_reconstruction(monkeypatch, make_update, photo_batch):
    """With the size threshold lowered every conv of a small net is solved with the circulant preconditioner,
    and the reconstruction is the block-Jacobi one (to the float32 image's rounding)."""
    model = _small_wide_net()
    update = make_update(model, photo_batch(image_size=16))
    reference = RGAP(rank="off")(model, update)
    monkeypatch.setattr(circulant, "MIN_UNKNOWNS", 0)
    rec = RGAP(rank="off")(model, update)
    assert [layer.solver for layer in rec.layers[:2]] == ["pcg-circulant"] * 2
    assert [layer.solver for layer in reference.layers[:2]] == ["pcg-blockjacobi"] * 2
    assert torch.allclose(rec.inputs, reference.inputs, atol=1e-7, rtol=0)


def test_attack_many_solves_large_layers_one_circulant_pcg_per_sample(monkeypatch, make_update, photo_batch):
    """`attack_many` sends layers that take the circulant to one PCG per sample (no stacked circulant): the same
    reconstructions as one call per update."""
    model = _small_wide_net()
    updates = [make_update(model, photo_batch(image_size=16, index=i)) for i in range(2)]
    monkeypatch.setattr(circulant, "MIN_UNKNOWNS", 0)
    many = RGAP()(model, updates[0]), RGAP()(model, updates[1])
    together = RGAP().attack_many(model, updates)
    for alone, joint in zip(many, together, strict=True):
        assert [layer.solver for layer in joint.layers[:2]] == ["pcg-circulant"] * 2
        assert torch.allclose(joint.inputs, alone.inputs, atol=1e-7, rtol=0)


def test_applies_only_to_large_unpooled_convs_with_weight_rows(make_conv_system):
    """CNN6-sized layers keep block-Jacobi; a layer without weight rows has no symbol to invert."""
    system, _ = make_conv_system((3, 32, 32), 12, (4, 4), (2, 2), (2, 2))
    assert not circulant.circulant_applies(system)  # CNN6's conv1 at 32x32: 3072 unknowns
    large, _ = make_conv_system((2, 128, 128), 2, (3, 3), (1, 1), (1, 1))
    assert circulant.circulant_applies(large)
    bare = ConvSystem(large.weight, large.k, large.grad, None, large.geom)
    assert not circulant.circulant_applies(bare)
    with pytest.raises(ValueError, match="weight rows"):
        CirculantPreconditioner(bare)
