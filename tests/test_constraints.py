"""The sparse constraint matrices equal the Jacobians autograd computes for the same layer."""

import pytest
import torch
import torch.nn.functional as F

from rgap_bench.linalg.constraints import ConvGeometry, conv_constraints, linear_constraints


def dense(block) -> torch.Tensor:
    return torch.from_numpy(block.matrix.toarray())


@pytest.mark.parametrize(
    ("in_shape", "filters", "kernel", "stride", "padding"),
    [
        ((2, 6, 6), 3, (3, 3), (1, 1), (1, 1)),
        ((3, 7, 5), 4, (2, 3), (2, 1), (1, 2)),
        ((1, 8, 8), 2, (4, 4), (2, 2), (2, 2)),
    ],
)
def test_conv_matrices_match_autograd(in_shape, filters, kernel, stride, padding):
    torch.manual_seed(0)
    weight = torch.randn(filters, in_shape[0], *kernel, dtype=torch.float64)
    x = torch.randn(in_shape, dtype=torch.float64)
    geom = ConvGeometry(in_shape, kernel, stride, padding)
    out = F.conv2d(x[None], weight, stride=stride, padding=padding)[0]
    assert out.shape[1:] == geom.out_hw
    k = torch.randn(out.shape, dtype=torch.float64)
    grad_w = torch.nn.grad.conv2d_weight(x[None], weight.shape, k[None], stride, padding)
    gradient, weight_rows = conv_constraints(weight, grad_w, k, out, geom)

    def conv(v):
        return F.conv2d(v.view(1, *in_shape), weight, stride=stride, padding=padding).reshape(-1)

    def weight_grad(v):
        return torch.nn.grad.conv2d_weight(v.view(1, *in_shape), weight.shape, k[None], stride, padding).reshape(-1)

    flat = x.reshape(-1)
    assert torch.allclose(dense(weight_rows), torch.autograd.functional.jacobian(conv, flat), atol=1e-12)
    assert torch.allclose(dense(gradient), torch.autograd.functional.jacobian(weight_grad, flat), atol=1e-12)
    assert torch.allclose(dense(gradient) @ flat, torch.from_numpy(gradient.rhs), atol=1e-10)
    assert torch.allclose(dense(weight_rows) @ flat, torch.from_numpy(weight_rows.rhs), atol=1e-10)


def test_linear_gradient_rows_skip_zero_errors():
    torch.manual_seed(0)
    weight = torch.randn(4, 5, dtype=torch.float64)
    x = torch.randn(5, dtype=torch.float64)
    k = torch.tensor([0.5, 0.0, -2.0, 0.0], dtype=torch.float64)
    grad_w = torch.outer(k, x)
    gradient, weight_rows = linear_constraints(weight, grad_w, k, weight @ x)
    assert gradient.matrix.shape == (2 * 5, 5)  # two active rows of k, five equations each
    assert torch.allclose(dense(gradient) @ x, torch.from_numpy(gradient.rhs))
    assert torch.allclose(dense(weight_rows), weight)
