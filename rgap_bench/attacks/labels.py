"""Analytic label recovery from the output layer's gradient (iDLG, Zhao et al. 2020), per client loss.

Each function returns candidate label vectors; the attack matches every candidate and keeps the one whose gradient
fits best. An empty list means "cannot infer": the caller falls back to optimising a soft label (DLG).

Cross-entropy, bias-free head W (C x F), batch 1: dL/dW = (p - onehot(y)) x^T is rank one and p - onehot(y) has
exactly one negative entry, the true class. Projecting every row on the largest row gives (p - e_y)_c <x, r>,
all of one sign except the true class: the odd one out is the label, whatever the sign of the features (iDLG's
"negative row" rule assumes non-negative features, which LeakyReLU networks do not have). With a bias its gradient
is p - onehot(y) itself. With two classes the sign of <x, r> is unknown, so both classes are candidates.

Cross-entropy, batch B > 1 (heuristic, as in breaching's iDLG extension): per class the bias gradient, or the row
sum of dL/dW oriented so that most rows are positive; the B most negative classes are the labels (assumes B
distinct labels; exact when features are non-negative and the batch has distinct labels).

Binary logistic (one logit): dL/dw = (sigma(mu) - y) x and <w, dL/dw> = (sigma(mu) - y) mu, whose sign only says
whether the prediction was right; the label itself depends on the unknown sign of mu. Batch 1: both labels are
candidates (the better gradient match wins). Batch > 1: 2^B hypotheses, so no inference (soft labels instead).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rgap_bench.attacks.matching import MatchingTarget
from rgap_bench.errors import InvalidUpdateError
from rgap_bench.losses import BinaryLogistic, CrossEntropy


def _head(target: MatchingTarget) -> tuple[Tensor, Tensor | None]:
    """Gradient of the output layer's weight (outputs x features) and of its bias when shared."""
    for i in range(len(target.names) - 1, -1, -1):
        grad = target.shared[i]
        if grad.dim() == 2 and grad.shape[0] == target.outputs and target.names[i].endswith("weight"):
            bias_name = target.names[i][: -len("weight")] + "bias"
            bias = target.shared[target.names.index(bias_name)] if bias_name in target.names else None
            return grad, bias
    raise InvalidUpdateError(
        f"the update has no gradient of the output layer's weight ({target.outputs} x features) to read labels from; "
        "share the labels (client.share_labels=true) or send the full gradient"
    )


def _cross_entropy(target: MatchingTarget) -> list[Tensor]:
    grad_w, grad_b = _head(target)
    b, c = target.batch_size, target.outputs
    if b == 1:
        if grad_b is not None:
            return [grad_b.argmin().reshape(1)]
        ref = grad_w[grad_w.norm(dim=1).argmax()]
        proj = grad_w @ ref
        if c == 2:
            return [torch.tensor([0]), torch.tensor([1])]
        majority = torch.sign(proj).sum().sign()
        score = proj * (majority if majority != 0 else 1.0)
        return [score.argmin().reshape(1)]
    if grad_b is not None:
        score = grad_b
    else:
        score = grad_w.sum(dim=1)
        if (score > 0).sum() < (score < 0).sum():
            score = -score
    picked = score.argsort()[: min(b, c)]
    if b > c:  # more samples than classes: repeat the most negative classes
        picked = picked[torch.arange(b) % c]
    return [picked.sort().values]


def _binary_logistic(target: MatchingTarget) -> list[Tensor]:
    if target.batch_size > 1:
        return []
    return [torch.tensor([0]), torch.tensor([1])]


INFERENCE: dict[str, Callable[[MatchingTarget], list[Tensor]]] = {
    CrossEntropy.name: _cross_entropy,
    BinaryLogistic.name: _binary_logistic,
}


def infer_labels(target: MatchingTarget) -> list[Tensor]:
    """Candidate label vectors (B,) for the update's loss; [] when the loss admits no analytic answer."""
    return [labels.to(target.device).long() for labels in INFERENCE[target.loss.name](target)]
