"""The joint null-space solve by one factorisation of the weight rows (attacks/rgap/joint_direct.py, used from
2048 lower unknowns on: CNN6's conv1 at 64x64, CNN6-d's at 32x32) agrees with the matrix-free pattern iteration,
and its rank proof never claims more than the dense joint rank."""

import pytest
import torch
import torch.nn.functional as F

import rgap_bench.attacks.rgap.null_space as null_space
from rgap_bench.attacks.rgap.joint_direct import PROOF
from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.constraints import ConvGeometry


def _problem(seed: int, d: int, filters: int):
    """A full conv (k3, padding 2: the Fourier symbol can bound it) under a layer with d free directions."""
    gen = torch.Generator().manual_seed(seed)
    act = PiecewiseLinear(0.2)
    geom = ConvGeometry((2, 6, 6), (3, 3), (1, 1), (2, 2))
    weight = torch.randn(filters, 2, 3, 3, dtype=torch.float64, generator=gen)
    x_lower = torch.rand(2, 6, 6, dtype=torch.float64, generator=gen)
    z = F.conv2d(x_lower[None], weight, padding=2)[0]
    x_upper = torch.where(z < 0, 0.2 * z, z).reshape(-1)
    back_k = torch.randn(x_upper.shape, dtype=torch.float64, generator=gen)
    k_lower = (back_k * act.derivative(act.inverse(x_upper))).reshape(z.shape)
    grad = torch.nn.grad.conv2d_weight(x_lower[None], weight.shape, k_lower[None], padding=2)
    null = torch.linalg.qr(torch.randn(x_upper.numel(), d, dtype=torch.float64, generator=gen)).Q
    offset = null @ torch.randn(d, dtype=torch.float64, generator=gen)
    offset *= 0.5 * float(x_upper.abs().min()) / float(offset.abs().max())
    return (weight, grad, geom, act, back_k, x_upper - offset, null), x_lower


@pytest.mark.parametrize(("filters", "d", "seed", "proven"), [(4, 5, 0, True), (3, 20, 1, True), (2, 60, 2, False)])
def test_the_direct_route_matches_the_matrix_free_one(monkeypatch, filters, d, seed, proven):
    args, x_lower = _problem(seed, d, filters)
    reference = null_space.solve_through_null_space(*args)
    monkeypatch.setattr(null_space, "DIRECT_MIN_UNKNOWNS", 0)
    direct = null_space.solve_through_null_space(*args)
    assert direct.consistent and direct.residual_rel < 1e-8
    assert direct.rank == reference.rank and direct.unknowns == reference.unknowns == 72 + d
    # where the symbol x Schur bound does not clear rcond (2 filters: a square symbol), the dense rank stands
    assert direct.rank_method == (PROOF if proven else "")
    assert direct.open_lower.shape == (72, direct.unknowns - direct.rank)
    if direct.unique:  # then both routes found the input itself
        assert torch.allclose(direct.x_lower.reshape(x_lower.shape), x_lower, atol=1e-7)


def test_no_proof_is_claimed_for_a_deficient_joint_system(monkeypatch):
    """110 free directions + 72 inputs against 128 weight rows and 36 gradient rows: at most rank 164 of 182."""
    args, _ = _problem(4, 110, 2)
    monkeypatch.setattr(null_space, "DIRECT_MIN_UNKNOWNS", 0)
    joint = null_space.solve_through_null_space(*args)
    assert joint.consistent and joint.rank == 164 and not joint.unique and joint.rank_method == ""
