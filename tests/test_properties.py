"""Properties of the layer operators and the output-layer inversion over random geometries and values (hypothesis).

The hand-picked cases in test_operators.py / test_logistic_scalar.py pin known answers; here every stride, padding
(also wider than the kernel: rows that read only padding), kernel and image size combination of a small range is
fair game, and so is every logit.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rgap_bench.attacks.logistic_scalar import F_MIN, U_STAR, invert_logistic_scalar, logistic_f
from rgap_bench.errors import InvalidUpdateError
from rgap_bench.linalg.constraints import ConvGeometry, conv_constraints, linear_constraints
from rgap_bench.linalg.linear_system import LinearSystem
from rgap_bench.linalg.lstsq import dense_lstsq, solve_blocks
from rgap_bench.linalg.operators import BlockJacobi, ConvSystem
from rgap_bench.losses import BinaryLogistic

pytestmark = pytest.mark.usefixtures("single_thread")  # tensors of a few hundred entries

# ------------------------------------------------------------------------------------------------- conv layers


@st.composite
def conv_systems(draw, scale_rows: bool | None = None) -> tuple[ConvSystem, torch.Tensor]:
    """A conv layer's scaled system at a random input x (returned too): channels, filters, kernel, stride and
    padding drawn independently per axis; k may have zero entries (rows that carry no information)."""
    c, filters = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0])), draw(st.integers(0, kernel[1])))
    h = draw(st.integers(max(1, kernel[0] - 2 * padding[0]), 7))
    w = draw(st.integers(max(1, kernel[1] - 2 * padding[1]), 7))
    with_z = draw(st.booleans())
    scale = draw(st.booleans()) if scale_rows is None else scale_rows
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    weight = torch.randn(filters, c, *kernel, dtype=torch.float64, generator=gen)
    x = torch.randn((c, h, w), dtype=torch.float64, generator=gen)
    z = F.conv2d(x[None], weight, stride=stride, padding=padding)[0]
    k = torch.randn(z.shape, dtype=torch.float64, generator=gen)
    if draw(st.booleans()):
        k = k * (torch.rand(k.shape, generator=gen) < 0.7)
    grad = torch.nn.grad.conv2d_weight(x[None], weight.shape, k[None], stride, padding)
    geom = ConvGeometry((c, h, w), kernel, stride, padding)
    return ConvSystem(weight, k, grad, z if with_z else None, geom, scale), x


def explicit_scaled(system: ConvSystem) -> tuple[torch.Tensor, torch.Tensor]:
    """The stacked, row-scaled constraint matrix of the explicit path and its right-hand side."""
    blocks = conv_constraints(system.weight, system.grad, system.k, system.z, system.geom)
    g = torch.from_numpy(blocks[0].matrix.toarray()) * system.grad_scale.expand_as(system.weight).reshape(-1, 1)
    rhs = [system.grad.reshape(-1) * system.grad_scale.expand_as(system.weight).reshape(-1)]
    rows = [g]
    if system.z is not None:
        rows.append(torch.from_numpy(blocks[1].matrix.toarray()) * system.weight_scale.reshape(-1, 1))
        rhs.append(system.z.reshape(-1) * system.weight_scale.reshape(-1))
    return torch.cat(rows), torch.cat(rhs)


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-10) -> bool:
    """Equal up to rounding relative to the larger of the two (entries may legitimately be zero)."""
    scale = max(float(a.abs().max()), float(b.abs().max()), 1.0) if a.numel() else 1.0
    return bool(((a - b).abs() <= rel * scale).all())


@settings(max_examples=60)
@given(conv_systems())
def test_conv_adjoints_pass_the_dot_product_test(case):
    system, _ = case
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(system.shape, dtype=torch.float64, generator=gen)
    v = torch.randn(system.weight.shape, dtype=torch.float64, generator=gen)
    y = torch.randn(system.k.shape, dtype=torch.float64, generator=gen)
    pairs = [
        ((system.grad_rows(x) * v).sum(), (x * system.grad_rows_adjoint(v)).sum()),
        ((system.weight_rows(x) * y).sum(), (x * system.weight_rows_adjoint(y)).sum()),
    ]
    for lhs, rhs in pairs:
        assert close(lhs, rhs)


@settings(max_examples=60)
@given(conv_systems())
def test_matrix_free_operators_equal_the_explicit_sparse_rows(case):
    system, x = case
    a, b = explicit_scaled(system)
    v = torch.randn(system.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    rows = [system.grad_rows(v).reshape(-1)]
    if system.z is not None:
        rows.append(system.weight_rows(v).reshape(-1))
    assert close(torch.cat(rows), a @ v.reshape(-1))
    assert close(system.normal(v).reshape(-1), a.T @ (a @ v.reshape(-1)))
    assert close(system.normal_rhs().reshape(-1), a.T @ b)
    assert system.residual_rel(x) < 1e-10  # x generated the right-hand side: the system is consistent


@settings(max_examples=60)
@given(conv_systems())
def test_dense_normal_and_its_blocks_equal_the_operator(case):
    system, _ = case
    a, _ = explicit_scaled(system)
    normal = a.T @ a
    assert close(system.dense_normal(), normal)
    c, h, w = system.shape
    kmat = system.channel_matrix()
    for ch in range(c):
        block = slice(ch * h * w, (ch + 1) * h * w)
        grad_part = normal[block, block] - torch.diag(system.weight_diagonal().reshape(c, -1)[ch])
        assert close(torch.diag(grad_part), torch.diag(kmat.T @ kmat))
    assert close(system.weight_diagonal().reshape(-1), torch.diag(normal) - torch.diag(kmat.T @ kmat).repeat(c))


@settings(max_examples=40)
@given(conv_systems(scale_rows=True))
def test_full_rank_bound_never_exceeds_the_spectrum(case):
    system, _ = case
    bound = system.full_rank_bound()
    if bound is not None:
        eig = torch.linalg.eigvalsh(system.dense_normal())
        assert 0 <= bound <= float(eig[0] / eig[-1]) + 1e-12


@settings(max_examples=40)
@given(conv_systems())
def test_block_jacobi_inverts_its_blocks(case):
    system, _ = case
    c, h, w = system.shape
    kmat = system.channel_matrix()
    diag = system.weight_diagonal().reshape(c, h * w)
    blocks = torch.diag_embed(diag) + (kmat.T @ kmat)[None]
    if float(torch.linalg.eigvalsh(blocks)[:, 0].min()) < 1e-6 * max(float(blocks.abs().max()), 1e-300):
        return  # a singular block: the preconditioner regularises it (jitter), there is no inverse to compare with
    v = torch.randn(c, h * w, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    applied = torch.bmm(blocks, v[..., None])[..., 0]
    assert close(BlockJacobi(system, jitter=0.0)(applied.reshape(c, h, w)).reshape(c, -1), v, rel=1e-6)


# ----------------------------------------------------------------------------------------------- linear layers


@settings(max_examples=60)
@given(
    out=st.integers(1, 12),
    n=st.integers(1, 12),
    direct_max=st.sampled_from([1, 512]),
    with_z=st.booleans(),
    scale_rows=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_linear_solve_equals_least_squares_on_the_sparse_rows(out, n, direct_max, with_z, scale_rows, seed):
    """The closed form (direct, Woodbury or CG) is the least-squares solution of the explicit rows, zeros in k too."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out, n, dtype=torch.float64, generator=gen)
    x = torch.randn(n, dtype=torch.float64, generator=gen)
    k = torch.randn(out, dtype=torch.float64, generator=gen) * (torch.rand(out, generator=gen) < 0.7)
    k[0] = 1.0 + float(torch.rand((), generator=gen))  # one active row: the gradient rows pin x down
    noise = 1e-3 * torch.randn(out, n, dtype=torch.float64, generator=gen)  # inconsistent: a real least squares
    grad = torch.outer(k, x) + noise
    z = weight @ x if with_z else None
    system = LinearSystem(weight, k, grad, z, scale_rows=scale_rows, direct_max=direct_max)
    solved, residual = system.solve()
    blocks = linear_constraints(weight, grad, k, z)
    reference, ref_residual = dense_lstsq(blocks, dtype=torch.float64, scale_rows=scale_rows)
    assert close(solved, torch.from_numpy(reference), rel=1e-8)
    assert residual == pytest.approx(ref_residual, rel=1e-6, abs=1e-12)
    dense = solve_blocks(blocks, scale_rows=scale_rows, want_rank=True)
    assert dense.rank == n and close(torch.from_numpy(dense.x), solved, rel=1e-8)


# ------------------------------------------------------------------------------------- output-layer inversion


def assert_roots_of(c: float, roots: list[float]) -> None:
    """Every root maps back to c, and there are as many as the shape of f says (two when F_MIN < c < 0)."""
    assert len(roots) == (2 if c < 0 else 1)
    for root in roots:
        assert math.isfinite(root)
        assert logistic_f(root) == pytest.approx(c, rel=1e-9, abs=1e-14)
    if len(roots) == 2:
        assert roots[0] <= U_STAR <= roots[1]


@given(st.floats(min_value=-700.0, max_value=700.0))
@example(U_STAR)  # c = F_MIN: c e^-c rounds onto -1/e, where scipy's W is NaN
@example(700.0)  # the second root of a c that small needs W_-1 of a subnormal argument
def test_every_logit_product_is_among_the_roots(u):
    c = logistic_f(u)
    roots = invert_logistic_scalar(c)
    assert_roots_of(c, roots)
    # f is flat at its minimum, so a root near U_STAR is only determined to ~sqrt(eps); elsewhere to rounding
    tol = 1e-6 if abs(u - U_STAR) < 1e-3 else 1e-8 * max(1.0, abs(u))
    assert min(abs(r - u) for r in roots) <= tol or any(logistic_f(r) == c for r in roots)


@given(st.floats(min_value=F_MIN, max_value=1e300))
@example(-5e-324)  # scipy's W_-1 is -inf for subnormal arguments
@example(-0.2784645427610738)  # one ulp above F_MIN: c e^-c rounds onto -1/e
def test_every_value_in_the_range_of_f_has_its_roots(c):
    assert_roots_of(c, invert_logistic_scalar(c))


@given(st.one_of(st.floats(max_value=F_MIN, exclude_max=True), st.sampled_from([math.nan, math.inf, -math.inf])))
def test_values_outside_the_range_of_f_are_refused_clearly(c):
    with pytest.raises(InvalidUpdateError, match="output layer"):
        invert_logistic_scalar(c)


def logistic_df(u: float) -> float:
    """f'(u) = -(1 + e^u - u e^u) / (1 + e^u)^2, written to stay finite for large |u|."""
    if u > 0:
        e = math.exp(-u)
        return -(e * e + e - u * e) / (1.0 + e) ** 2
    e = math.exp(u)
    return -(1.0 + e - u * e) / (1.0 + e) ** 2


@given(
    features=st.integers(1, 6),
    label=st.integers(0, 1),
    scale=st.floats(min_value=1e-3, max_value=30.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_client_gradient_inverts_to_its_logit(features, label, scale, seed):
    """<w, dL/dw> of the client's own binary logistic loss on a random single-logit layer has y * mu as a root, up
    to what the client's rounding left of it: torch computes dL/dmu = sigmoid(mu) - t, so c carries an absolute
    error of ~eps * |mu|, which moves the root by that over |f'(u)| (or its square root where f is flat)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(1, features, dtype=torch.float64, generator=gen, requires_grad=True)
    x = torch.randn(1, features, dtype=torch.float64, generator=gen) * scale
    logits = x @ w.T
    (grad,) = torch.autograd.grad(BinaryLogistic()(logits, torch.tensor([label])), w)
    c = float((w.detach() * grad).sum())
    u = (2 * label - 1) * float(logits.detach())
    if c < F_MIN:  # rounding at the minimum of f: the attack clamps to U_STAR there
        assert abs(u - U_STAR) < 1e-6
        return
    roots = invert_logistic_scalar(c)
    assert_roots_of(c, roots)
    error_c = 8 * torch.finfo(torch.float64).eps * max(1.0, abs(u))
    slope = abs(logistic_df(u))
    moved = error_c / slope if slope > 0 else math.inf
    if abs(u - U_STAR) < 0.5:  # f'' > 0.1 there: f(u + d) - f(u) >= 0.05 d^2 whatever f'(u)
        moved = min(moved, (20 * error_c) ** 0.5)
    tol = 1e-9 * max(1.0, abs(u)) + moved
    assert min(abs(r - u) for r in roots) <= tol
