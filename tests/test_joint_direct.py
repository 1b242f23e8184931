"""The joint null-space solve by one factorisation of the weight rows (attacks/rgap/joint_direct.py, used from
2048 lower unknowns on: CNN6's conv1 at 64x64, CNN6-d's at 32x32) agrees with the matrix-free pattern iteration,
and its rank proof never claims more than the dense joint rank."""

import pytest
import torch

import rgap_bench.attacks.rgap.null_space as null_space
from rgap_bench.attacks.rgap.joint_direct import PROOF


@pytest.mark.parametrize(("filters", "d", "seed", "proven"), [(4, 5, 0, True), (3, 20, 1, True), (2, 60, 2, False)])
def test_the_direct_route_matches_the_matrix_free_one(monkeypatch, two_layer_problem, filters, d, seed, proven):
    *args, x_lower, _ = two_layer_problem(seed, d, filters, padding=2)
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


def test_no_proof_is_claimed_for_a_deficient_joint_system(monkeypatch, two_layer_problem):
    """110 free directions + 72 inputs against 128 weight rows and 36 gradient rows: at most rank 164 of 182."""
    *args, _, _ = two_layer_problem(4, 110, 2, padding=2)
    monkeypatch.setattr(null_space, "DIRECT_MIN_UNKNOWNS", 0)
    joint = null_space.solve_through_null_space(*args)
    assert joint.consistent and joint.rank == 164 and not joint.unique and joint.rank_method == ""
