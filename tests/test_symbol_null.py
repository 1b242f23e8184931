"""A full strided conv's null space and solution from its symbol (linalg/symbol_null.py, solvers/symbol_null.py:
CNN6's conv2 at 64x64) agree with the dense normal matrix's."""

import math

import pytest
import torch
import torch.nn.functional as F

from rgap_bench.attacks.rgap import RGAPLayer, RGAPOptions
from rgap_bench.attacks.rgap.plan import LayerPlan
from rgap_bench.attacks.rgap.solvers.base import LayerProblem
from rgap_bench.attacks.rgap.solvers.symbol_null import solve_symbol_null
from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.constraints import ConvGeometry
from rgap_bench.linalg.operators import ConvSystem
from rgap_bench.linalg.symbol_null import full_polyphase, symbol_null_basis


def _layer(seed: int, filters: int, size: int, kernel: int = 3, stride: int = 2, padding: int = 1):
    """A conv layer's scaled system, consistent with a known input."""
    gen = torch.Generator().manual_seed(seed)
    op = torch.nn.Conv2d(3, filters, kernel, stride, padding, bias=False).double()
    with torch.no_grad():
        op.weight.copy_(torch.randn(op.weight.shape, dtype=torch.float64, generator=gen))
    geom = ConvGeometry((3, size, size), (kernel, kernel), (stride, stride), (padding, padding))
    x = torch.rand(3, size, size, dtype=torch.float64, generator=gen)
    z = F.conv2d(x[None], op.weight.detach(), stride=stride, padding=padding)[0]
    k = torch.randn(z.shape, dtype=torch.float64, generator=gen)
    grad = torch.nn.grad.conv2d_weight(x[None], op.weight.shape, k[None], stride=stride, padding=padding)
    system = ConvSystem(op.weight.detach(), k, grad, z, geom)
    layer = RGAPLayer(1, "blocks.1.op.weight", op, PiecewiseLinear(0.2), geom.in_shape, tuple(z.shape), grad)
    return LayerProblem(layer, op.weight.detach(), k, z, system), x


def test_the_basis_spans_the_weight_rows_null_space():
    """T is orthonormal on the polyphase grid, the inverse FFT synthesises its columns, and every theta whose grid
    vanishes at the unreached positions is an input the weight rows send to zero: the conv's null space."""
    gen = torch.Generator().manual_seed(3)
    geom = ConvGeometry((3, 9, 9), (3, 3), (2, 2), (1, 1))
    weight = torch.randn(8, 3, 3, 3, dtype=torch.float64, generator=gen)
    basis = symbol_null_basis(weight, geom)
    assert full_polyphase(geom) and basis.size == 25 * (12 - 8)  # 25 frequencies, 12 - 8 null vectors each
    columns, unreached = basis.pixels(), basis.unreached_rows()
    grid = torch.cat([columns, unreached])
    assert torch.allclose(grid.T @ grid, torch.eye(basis.size, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(basis.synthesize(torch.eye(basis.size, dtype=torch.float64)), columns, atol=1e-12)
    _, sv, vh = torch.linalg.svd(unreached)
    inside = vh[int((sv > 1e-10).sum()) :].T  # theta whose grids vanish where no pixel is
    images = (columns @ inside).T.reshape(-1, *geom.in_shape)
    assert inside.shape[1] == 243 - 8 * 25  # n - (weight rows): W has full row rank here
    assert float(F.conv2d(images, weight, stride=2, padding=1).abs().max()) < 1e-12
    assert not full_polyphase(ConvGeometry((3, 8, 8), (3, 3), (2, 2), (1, 1)))


@pytest.mark.parametrize(("filters", "size", "seed"), [(8, 9, 0), (6, 11, 1), (10, 9, 2)])
def test_the_symbol_path_matches_the_dense_normal_matrix(filters, size, seed):
    problem, x_true = _layer(seed, filters, size)
    n = math.prod(problem.layer.in_shape)
    options = RGAPOptions()
    normal = problem.system.dense_normal().reshape(n, n)
    eig, vectors = torch.linalg.eigh(normal)
    dense_null = vectors[:, eig <= options.rcond * float(eig[-1])]
    solve = solve_symbol_null(problem, LayerPlan("symbol", True, null_hint=dense_null.shape[1]), options)
    assert solve.solver == "symbol-null-space" and solve.rank == n - dense_null.shape[1]
    if dense_null.shape[1]:  # the same null space, to rounding
        assert float(torch.linalg.svdvals(dense_null.T @ solve.null_basis).min()) > 1 - 1e-8
    error = (solve.x.reshape(-1) - x_true.reshape(-1)).reshape(-1, 1)
    if dense_null.shape[1]:
        error = error - dense_null @ (dense_null.T @ error)
    assert solve.residual_rel < 1e-9 and float(error.norm()) < 1e-8  # exact up to the null space


@pytest.mark.parametrize(("kernel", "stride", "padding", "size"), [(3, 2, 1, 9), (4, 2, 2, 10), (3, 1, 2, 6)])
def test_the_gradient_rows_on_the_basis_are_the_masked_fourier_coefficients_of_k(kernel, stride, padding, size):
    """The gradient rows of every basis vector, from the FFT of the masked error, equal K (x) I applied to E^T T."""
    problem, _ = _layer(4, 5, size, kernel, stride, padding)
    system = problem.system
    basis = symbol_null_basis(system.row_weight, system.row_geom)
    kmat = system.channel_matrix().detach()
    explicit = (kmat @ basis.pixels().reshape(3, size * size, -1)).reshape(3 * kmat.shape[0], -1)
    assert torch.allclose(basis.gradient_rows(system.k_full, system.grad_scale), explicit, atol=1e-12)
