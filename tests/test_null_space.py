"""The joint null-space solve recovers both layers exactly when the activation pattern is known up to the null part."""

import pytest
import torch
import torch.nn.functional as F

from rgap_bench.attacks.rgap.null_space import solve_through_null_space
from rgap_bench.errors import UnsupportedModelError


@pytest.mark.parametrize("seed", [0, 1])
def test_joint_solve_recovers_both_layers(seed, two_layer_problem):
    weight, grad, geom, act, back_k, x_min, null, x_lower, x_upper = two_layer_problem(seed)
    joint = solve_through_null_space(weight, grad, geom, act, back_k, x_min, null)
    assert joint.consistent and joint.residual_rel < 1e-8 and joint.unique
    assert torch.allclose(joint.x_lower.reshape(x_lower.shape).double().cpu(), x_lower, atol=1e-7)
    assert torch.allclose(joint.x_upper.double().cpu(), x_upper, atol=1e-7)


def _explicit_joint_rank(weight, act, back_k, x_upper, null) -> int:
    """Rank of [G 0; W -N/slope] under x_upper's pattern, built column by column from conv2d (no ConvSystem)."""
    slope = act.derivative(act.inverse(x_upper))
    k = (back_k * slope).reshape(1, weight.shape[0], 6, 6)
    columns = []
    for unit in torch.eye(72, dtype=torch.float64):
        x = unit.reshape(1, 2, 6, 6)
        grad_rows = torch.nn.grad.conv2d_weight(x, weight.shape, k, padding=1).reshape(-1)
        columns.append(torch.cat([grad_rows, F.conv2d(x, weight, padding=1).reshape(-1)]))
    for direction in null.T:
        columns.append(torch.cat([torch.zeros(weight.numel(), dtype=torch.float64), -direction / slope]))
    return int(torch.linalg.matrix_rank(torch.stack(columns, dim=1)))


@pytest.mark.parametrize(("filters", "d", "seed"), [(4, 5, 0), (2, 50, 1)])
def test_the_joint_rank_is_the_explicit_joint_matrix_rank(filters, d, seed, two_layer_problem):
    weight, grad, geom, act, back_k, x_min, null, _, _ = two_layer_problem(seed, d, filters)
    joint = solve_through_null_space(weight, grad, geom, act, back_k, x_min, null)
    assert joint.consistent and joint.unknowns == 72 + d
    assert joint.rank == _explicit_joint_rank(weight, act, back_k, joint.x_upper, null)
    assert joint.open_lower.shape == (72, joint.unknowns - joint.rank)


def test_a_settled_pattern_with_a_tiny_residual_can_still_be_wrong(two_layer_problem):
    """2 filters leave 36 gradient rows per channel's 36 pixels x 2 channels, and 50 free directions eat most of
    the 72 weight rows: the pattern settles, every equation fits, the answer is wrong, and only the rank says so."""
    weight, grad, geom, act, back_k, x_min, null, x_lower, _ = two_layer_problem(1, 50, 2)
    joint = solve_through_null_space(weight, grad, geom, act, back_k, x_min, null)
    assert joint.consistent and joint.residual_rel < 1e-10
    assert float((joint.x_lower.reshape(x_lower.shape) - x_lower).abs().max()) > 0.1
    assert (joint.rank, joint.unknowns) == (108, 122) and not joint.unique


def test_a_linear_layer_below_is_refused_with_advice(two_layer_problem):
    weight, grad, _, act, back_k, x_min, null, _, _ = two_layer_problem()
    with pytest.raises(UnsupportedModelError, match="carry_null_space=false"):
        solve_through_null_space(weight, grad, None, act, back_k, x_min, null)
