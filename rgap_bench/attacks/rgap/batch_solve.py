"""Disaggregating a batch's gradient in a fully connected network with a softmax cross-entropy head (docs/batches.md).

Every linear layer's gradient is a sum of B rank-one terms, dW_l = K_l^T X_{l-1} (K_l: the B samples' dL/dz_l as
rows, X_{l-1}: their inputs as rows). Two steps recover every sample:

1. The head. Its rows are spanned by the B penultimate features, so X = H V^T (V: the top B right singular
   vectors of s dW_L, H: an unknown B x B matrix), and E = softmax(X W^T + b) - Y must reproduce the gradient:
   E^T H = U S (and E^T 1 = s db with a bias). With the labels Y known and distinct these C x B (+ C) smooth
   equations in B^2 unknowns have isolated roots; Newton's method (Gauss-Newton on the overdetermined system)
   finds the one next to uniform predictions, and its residual certifies it.
2. Every layer below is linear in its inputs once the samples' k above are known: k_l = (k_{l+1} W_{l+1}) *
   sigma'(z_l) with z_l = sigma^-1(x_l), and K_l^T X_{l-1} = dW_l has the unique solution X_{l-1} = (K_l^T)^+ dW_l
   when the B rows of K_l are independent. Where they are not, the weight rows X_{l-1} W_l^T = Z_l - b fix the
   directions the gradient rows leave free (closed form as well).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import jacrev

from rgap_bench.attacks.rgap.layers import RGAPLayer

RANK_RCOND = 1e-10  # singular values below this fraction of the largest count as zero
HEAD_TOL = 1e-14  # relative residual at which Newton's method has found the root to float64 precision
HEAD_MAX_STEPS = 200


@dataclass(frozen=True)
class HeadSolution:
    """The head's per-sample penultimate features (B, n) and errors dL/dz (B, C), in the shared gradient's scale."""

    x: Tensor
    k: Tensor
    residual_rel: float  # ||[E^T X - s dW; E^T 1 - s db]|| / ||[s dW; s db]||
    steps: int
    jacobian_rank: int  # B^2 when the root is isolated (the features are unique given the labels)


@dataclass(frozen=True)
class LayerSplit:
    """One layer's per-sample inputs (B, in) and how well they fit its gradient and weight rows."""

    x: Tensor
    residual_rel: float  # gradient rows: ||K^T X - dW|| / ||dW||
    weight_residual_rel: float  # weight rows: ||X W^T + b - Z|| / ||Z - b||
    rank: int  # rank of K (B when the gradient rows alone determine every sample)
    deficiency: int  # input directions neither the gradient rows nor the weight rows determine


def numerical_rank(matrix: Tensor) -> int:
    values = torch.linalg.svdvals(matrix)
    return int((values > RANK_RCOND * values[0]).sum()) if values.numel() and values[0] > 0 else 0


def head_rank(head: RGAPLayer) -> int:
    """The rank of the output layer's gradient: the number of samples it can tell apart."""
    return numerical_rank(head.grad.double())


def solve_head(head: RGAPLayer, labels: list[int], scale: int, dtype: torch.dtype) -> HeadSolution:
    """The B samples' penultimate features and output errors from the head's gradient (step 1 above)."""
    b, classes = len(labels), head.op.weight.shape[0]
    grad = head.grad.double() * scale
    weight = head.op.weight.detach().double().to(grad.device)
    bias = head.op.bias.detach().double().to(grad.device) if head.op.bias is not None else grad.new_zeros(classes)
    u, s, vh = torch.linalg.svd(grad, full_matrices=False)
    us, v = u[:, :b] * s[:b], vh[:b].T  # (C, B), (n, B)
    r = v.T @ weight.T  # (B, C): the logits of X = H V^T are H R + b
    y = torch.nn.functional.one_hot(torch.as_tensor(labels, device=grad.device), classes).double()
    target = [us]
    if head.bias_grad is not None:
        target.append(head.bias_grad.double().reshape(classes, 1) * scale)
    goal = torch.cat(target, dim=1)
    norm = float(goal.norm())

    def residual(h: Tensor) -> Tensor:
        e = torch.softmax(h @ r + bias, dim=1) - y
        parts = [e.T @ h]
        if head.bias_grad is not None:
            parts.append(e.sum(dim=0).reshape(classes, 1))
        return (torch.cat(parts, dim=1) - goal).reshape(-1) / norm

    e0 = torch.full_like(y, 1.0 / classes) - y  # uniform predictions: an untrained net's, and a start near the root
    h = torch.linalg.pinv(e0.T) @ us
    res = residual(h)
    steps = 0
    while steps < HEAD_MAX_STEPS and float(res.norm()) > HEAD_TOL:
        steps += 1
        jac = jacrev(residual)(h).reshape(res.numel(), b * b)
        step = -(torch.linalg.pinv(jac) @ res).reshape(b, b)
        t, improved = 1.0, False
        for _ in range(40):  # step halving: Newton from afar may overshoot
            trial = residual(h + t * step)
            if float(trial.norm()) < float(res.norm()):
                h, res, improved = h + t * step, trial, True
                break
            t /= 2
        if not improved:
            break
    jac = jacrev(residual)(h).reshape(res.numel(), b * b)
    x = h @ v.T
    k = (torch.softmax(x @ weight.T + bias, dim=1) - y) / scale
    return HeadSolution(x.to(dtype), k.to(dtype), float(res.norm()), steps, numerical_rank(jac))


def solve_layer(layer: RGAPLayer, k: Tensor, z: Tensor, dtype: torch.dtype) -> LayerSplit:
    """A linear layer's B inputs from its gradient, given every sample's k = dL/dz (B, out) and z (B, out)."""
    grad = layer.grad.to(dtype)  # (out, in)
    weight = layer.op.weight.detach().to(dtype)
    shift = z if layer.op.bias is None else z - layer.op.bias.detach().to(dtype)
    x = torch.linalg.pinv(k.T) @ grad  # (B, in): exact when K has rank B (pinv: any device, any rank)
    rank = numerical_rank(k)
    deficiency = 0
    if rank < k.shape[0]:  # the gradient rows leave span(null(K^T)) free: the weight rows decide it
        _, _, vh = torch.linalg.svd(k.T, full_matrices=True)
        null = vh[rank:].T  # (B, r): sample combinations the gradient does not see
        x = x - null @ (null.T @ x)  # the minimum-norm part, orthogonal to the free directions
        rhs = null.T @ (shift - x @ weight.T)  # (r, out) = Q W^T
        q = (torch.linalg.pinv(weight) @ rhs.T).T  # (r, in)
        x = x + null @ q
        deficiency = max(0, weight.shape[1] - numerical_rank(weight)) * null.shape[1]
    grad_res = float((k.T @ x - grad).norm() / grad.norm().clamp_min(torch.finfo(dtype).tiny))
    weight_res = float((x @ weight.T - shift).norm() / shift.norm().clamp_min(torch.finfo(dtype).tiny))
    return LayerSplit(x, grad_res, weight_res, rank, deficiency)
