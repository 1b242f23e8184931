"""Matrix-free layer operators agree with the explicit sparse matrices, and their adjoints are exact."""

import numpy as np
import pytest
import torch

from rgap_bench.linalg.constraints import conv_constraints, linear_constraints
from rgap_bench.linalg.linear_system import LinearSystem
from rgap_bench.linalg.lstsq import dense_lstsq
from rgap_bench.linalg.operators import BlockJacobi
from rgap_bench.linalg.pcg import pcg


def explicit(system):
    grad_block, weight_block = conv_constraints(system.weight, system.grad, system.k, system.z, system.geom)
    return torch.from_numpy(grad_block.matrix.toarray()), torch.from_numpy(weight_block.matrix.toarray())


def test_operators_match_the_sparse_matrices(conv_case, make_conv_system):
    system, _ = make_conv_system(*conv_case, scale_rows=False)
    g_dense, w_dense = explicit(system)
    v = torch.randn(system.shape, dtype=torch.float64)
    assert torch.allclose(system.grad_rows(v).reshape(-1), g_dense @ v.reshape(-1), atol=1e-12)
    assert torch.allclose(system.weight_rows(v).reshape(-1), w_dense @ v.reshape(-1), atol=1e-12)


def test_row_scales_are_the_row_norms(conv_case, make_conv_system):
    system, _ = make_conv_system(*conv_case)
    g_dense, w_dense = explicit(system)
    g_scale = system.grad_scale.expand_as(system.weight).reshape(-1)
    g_norm = g_dense.norm(dim=1)
    assert torch.allclose(g_scale * g_norm, (g_norm > 0).double(), atol=1e-12)
    w_norm = w_dense.norm(dim=1)
    assert torch.allclose(system.weight_scale.reshape(-1) * w_norm, (w_norm > 0).double(), atol=1e-12)


def test_adjoints_pass_the_dot_product_test(conv_case, make_conv_system):
    system, _ = make_conv_system(*conv_case)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(system.shape, dtype=torch.float64, generator=gen)
    v = torch.randn(system.weight.shape, dtype=torch.float64, generator=gen)
    y = torch.randn(system.k.shape, dtype=torch.float64, generator=gen)
    lhs, rhs = (system.grad_rows(x) * v).sum(), (x * system.grad_rows_adjoint(v)).sum()
    assert torch.isclose(lhs, rhs, rtol=1e-12, atol=1e-12)
    lhs, rhs = (system.weight_rows(x) * y).sum(), (x * system.weight_rows_adjoint(y)).sum()
    assert torch.isclose(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_channel_matrix_and_diagonal_match_the_normal_matrix(conv_case, make_conv_system):
    system, _ = make_conv_system(*conv_case)
    g_dense, w_dense = explicit(system)
    g_scaled = g_dense * system.grad_scale.expand_as(system.weight).reshape(-1, 1)
    w_scaled = w_dense * system.weight_scale.reshape(-1, 1)
    c, h, w = system.shape
    kmat = system.channel_matrix()
    block = (g_scaled.T @ g_scaled).reshape(c, h * w, c, h * w)
    for ch in range(c):
        assert torch.allclose(block[ch, :, ch, :], kmat.T @ kmat, atol=1e-12)
    assert torch.allclose(system.weight_diagonal().reshape(-1), (w_scaled**2).sum(0), atol=1e-12)


def test_dense_normal_is_the_scaled_normal_matrix(conv_case, make_conv_system):
    system, _ = make_conv_system(*conv_case)
    g_dense, w_dense = explicit(system)
    a = torch.cat(
        [
            g_dense * system.grad_scale.expand_as(system.weight).reshape(-1, 1),
            w_dense * system.weight_scale.reshape(-1, 1),
        ]
    )
    assert torch.allclose(system.dense_normal(), a.T @ a, atol=1e-12)


def test_full_rank_bound_is_a_lower_bound_on_the_relative_spectrum(make_conv_system):
    tall, _ = make_conv_system((3, 5, 5), 8, (3, 3), (1, 1), (1, 1))  # K: 72 x 25, full column rank
    eig = torch.linalg.eigvalsh(tall.dense_normal())
    bound = tall.full_rank_bound()
    assert bound is not None and 0 < bound <= float(eig[0] / eig[-1])
    wide, _ = make_conv_system((2, 6, 6), 3, (3, 3), (1, 1), (1, 1))  # K: 27 x 36: a channel is not determined
    # by its gradient rows
    assert wide.full_rank_bound() is None


def test_preconditioner_inverts_its_block_diagonal(conv_case, make_conv_system):
    system, _ = make_conv_system(*conv_case)
    pre = BlockJacobi(system, jitter=0.0)
    c, h, w = system.shape
    kmat = system.channel_matrix()
    diag = system.weight_diagonal().reshape(c, h * w)
    v = torch.randn(c, h * w, dtype=torch.float64)
    applied = diag * v + v @ (kmat.T @ kmat)
    assert torch.allclose(pre(applied.reshape(c, h, w)).reshape(c, -1), v, atol=1e-8)


def test_pcg_recovers_the_layer_input(conv_case, make_conv_system):
    system, x = make_conv_system(*conv_case)
    result = pcg(system.normal, system.normal_rhs(), BlockJacobi(system), tol=1e-13, max_iter=2000)
    assert torch.allclose(result.x, x, atol=1e-8)
    assert system.residual_rel(result.x) < 1e-9


@pytest.mark.parametrize(("out", "n", "direct_max"), [(6, 9, 512), (12, 5, 512), (40, 30, 16)])
def test_linear_system_matches_dense_least_squares(out, n, direct_max):
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(out, n, dtype=torch.float64, generator=gen)
    x = torch.randn(n, dtype=torch.float64, generator=gen)
    k = torch.randn(out, dtype=torch.float64, generator=gen)
    k[::3] = 0.0
    grad = torch.outer(k, x) + 1e-3 * torch.randn(out, n, dtype=torch.float64, generator=gen)  # inconsistent
    z = weight @ x
    solved, residual = LinearSystem(weight, k, grad, z, direct_max=direct_max).solve()
    reference, ref_residual = dense_lstsq(linear_constraints(weight, grad, k, z), dtype=torch.float64, scale_rows=True)
    assert np.allclose(solved.numpy(), reference, atol=1e-9)
    assert residual == pytest.approx(ref_residual, rel=1e-6)


@pytest.mark.parametrize(
    ("in_shape", "filters", "mode"), [((3, 6, 6), 8, "direct"), ((2, 6, 6), 3, "woodbury")], ids=["tall", "wide"]
)
def test_compact_preconditioner_keeps_the_least_squares_solution(make_conv_system, in_shape, filters, mode):
    """Under noise on z and on the gradient (an inconsistent system), PCG with the float32 preconditioner converges
    to the dense least-squares solution of the scaled system, as the float64 one does (K tall: direct blocks, K
    wide: the Woodbury form)."""
    clean, _ = make_conv_system(in_shape, filters, (3, 3), (1, 1), (1, 1))
    gen = torch.Generator().manual_seed(3)
    z = clean.z + 1e-2 * torch.randn(clean.z.shape, dtype=torch.float64, generator=gen)
    grad = clean.grad + 1e-2 * torch.randn(clean.grad.shape, dtype=torch.float64, generator=gen)
    system = type(clean)(clean.weight, clean.k, grad, z, clean.geom)
    g_dense, w_dense = explicit(system)
    a = torch.cat(
        [
            g_dense * system.grad_scale.expand_as(system.weight).reshape(-1, 1),
            w_dense * system.weight_scale.reshape(-1, 1),
        ]
    )
    b = torch.cat([(system.grad * system.grad_scale).reshape(-1), (system.z * system.weight_scale).reshape(-1)])
    reference = torch.linalg.lstsq(a, b[:, None]).solution[:, 0].reshape(system.shape)
    compact = BlockJacobi(system, compact=True)
    assert (compact.mode, compact.inverse.dtype) == (mode, torch.float32)  # the compact path is the one tested
    result = pcg(system.normal, system.normal_rhs(), compact, tol=1e-12, max_iter=2000)
    assert torch.allclose(result.x, reference, atol=1e-9, rtol=0)
    exact = pcg(system.normal, system.normal_rhs(), BlockJacobi(system), tol=1e-12, max_iter=2000)
    assert result.iterations <= 2 * exact.iterations


def test_compact_dtype_keeps_float64_for_ill_conditioned_or_float32_blocks():
    from rgap_bench.linalg.precision import compact_dtype

    assert compact_dtype(torch.float64, 289, 1e3) == torch.float32
    assert compact_dtype(torch.float64, 289, 1e7) == torch.float64
    assert compact_dtype(torch.float32, 289, 1.0) == torch.float32


def test_compact_inverse_falls_back_to_float64_where_float32_cholesky_fails():
    from rgap_bench.linalg.operators import _symmetric_inverse

    close_pair = torch.tensor([[1.0, 1 - 1e-10], [1 - 1e-10, 1.0]], dtype=torch.float64)[None]  # singular in float32
    inverse = _symmetric_inverse(close_pair, torch.float32)
    assert inverse.dtype == torch.float32 and bool(torch.isfinite(inverse).all())
    assert torch.allclose(inverse.double(), torch.linalg.inv(close_pair), rtol=1e-6)
