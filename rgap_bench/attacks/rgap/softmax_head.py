"""The output step for a softmax cross-entropy head z = W x (+ b), C >= 2 classes, one sample.

The head's error is g = (softmax(z) - onehot(t)) / s (s: the loss's reduction scale), with g_t < 0 and every other
g_j >= 0, and its weight gradient is g x^T: every row is a multiple of x, the label's row with the other sign (the
label, as in iDLG). With a bias, dL/db = g gives the error directly and x = g^T dW / |g|^2. Without one only the
direction of x is known, x = a / gamma with a = s dW[t] and gamma = s g_t in (-1, 0); gamma then solves the scalar
equation 1 - softmax(W a / gamma)_t = -gamma, found by bracketing sign changes on a log grid of -gamma and refining
each with Brent's method. Every root is a candidate: the recursion's consistency decides between them.

A confident prediction: the client computes g_t = p_t - 1 in its own precision, which cancels most of its digits
when 1 - p_t approaches that precision's epsilon (float32: a loss of 1e-3 keeps about 4 digits, 1e-6 about one),
while every other row p_j x keeps its digits; the rows sum to zero, so minus the sum of the others is an accurate
a = g_t x. Its start takes g_j = softmax(z)_j / s for j != t (what ties the root to the recursion: a wrong root's
error vector does not fit the layers below) and g_t = <dW[t], x> / |x|^2, the client's own rounded value, which its
lower layers' gradients were computed from. Both starts are tried when the two estimates of a disagree beyond
rounding (AGREE), the label's row alone otherwise. A row the client rounded to zero (p_j underflowed) keeps a zero
error in every start, as it had on the client.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import logsumexp
from torch import Tensor

from rgap_bench.attacks.rgap.start import HeadStart
from rgap_bench.errors import InvalidUpdateError

log = logging.getLogger(__name__)

LOG_GRID = np.linspace(-300.0, 0.0, 3001)  # log(-gamma): down to |gamma| = 1e-130, steps of 0.1 (10%)
AGREE = 1e-6  # relative difference of the two estimates of g_t x below which they are rounding of the same vector


def label_candidates(rows: Tensor) -> list[int]:
    """Classes whose gradient row points against every other non-zero row (rows: (C, ...) multiples of x, or the
    bias gradient). With C >= 3 this is the label alone; with two non-zero rows both qualify. A prediction so
    confident that the client's precision rounded 1 - p_t to zero leaves the label's row zero: then the zero rows
    are the candidates (`softmax_starts` keeps the largest logit). Noise (a defence) can leave none (the caller
    then takes the largest row: |g_t| is the sum of the others)."""
    flat = rows.reshape(rows.shape[0], -1).double()
    gram = flat @ flat.T
    norms = gram.diagonal()
    if not bool((norms > 0).any()):
        raise InvalidUpdateError(
            "the output layer's gradient is zero: the client's loss is already at its minimum, nothing to invert"
        )
    off = gram - torch.diag(norms)
    opposed = (norms > 0) & (off <= 0).all(dim=1)
    if not bool(opposed.any()) and bool((off >= 0).all()):  # every non-zero row alike: the label's is silent
        opposed = norms == 0
    return [int(j) for j in torch.nonzero(opposed).flatten()]


def _phi(log_gamma: np.ndarray, v: np.ndarray, label: int) -> np.ndarray:
    """log(1 - softmax(z)_t) - log(-gamma) at z = v / gamma, gamma = -exp(log_gamma), in the log domain so that a
    confident prediction (1 - p_t tiny) keeps its digits."""
    z = -np.multiply.outer(np.exp(-np.atleast_1d(log_gamma)), v)
    others = np.delete(z, label, axis=-1)
    return logsumexp(others, axis=-1) - logsumexp(z, axis=-1) - np.atleast_1d(log_gamma)


def _brackets(grid: np.ndarray, v: np.ndarray, label: int, depth: int) -> list[tuple[float, float]]:
    """Intervals of `grid` where phi changes sign. Around a local extremum of the wrong sign (a pair of roots
    closer than a grid step, e.g. both sides of a confident prediction's root) a 1000 times finer grid looks
    again, `depth` times: a sampling search, so every root it reports is bracketed."""
    values = _phi(grid, v, label)
    found = [
        (float(grid[i]), float(grid[i + 1])) for i in np.nonzero(np.sign(values[:-1]) * np.sign(values[1:]) <= 0)[0]
    ]
    if depth == 0:
        return found
    inner = np.arange(1, len(grid) - 1)
    peaks = (values[inner] >= values[inner - 1]) & (values[inner] >= values[inner + 1]) & (values[inner] < 0)
    dips = (values[inner] <= values[inner - 1]) & (values[inner] <= values[inner + 1]) & (values[inner] > 0)
    for i in inner[peaks | dips]:
        found += _brackets(np.linspace(grid[i - 1], grid[i + 1], 2001), v, label, depth - 1)
    return found


def gamma_roots(v: np.ndarray, label: int) -> list[float]:
    """Every gamma in (-1, 0) with 1 - softmax(v / gamma)_t = -gamma that the grid brackets (v = W a)."""
    roots = set()
    for lo, hi in _brackets(LOG_GRID, v, label, depth=3):
        f_lo, f_hi = (float(_phi(s, v, label)[0]) for s in (lo, hi))
        root = (
            lo if f_lo == 0 else hi if f_hi == 0 else brentq(lambda s: float(_phi(s, v, label)[0]), lo, hi, xtol=1e-14)
        )
        roots.add(root)
    if not roots:
        # An exact tangency (a double root) has no sign change: the grid's closest point is the estimate, and its
        # candidate's residual says how good it is.
        values = _phi(LOG_GRID, v, label)
        best = float(LOG_GRID[int(np.argmax(values))])
        log.warning("no root of the softmax head's scalar equation bracketed; using |gamma| = %.3g", np.exp(best))
        roots.add(best)
    return _distinct(sorted(-float(np.exp(s)) for s in roots))


def _distinct(roots: list[float]) -> list[float]:
    """Roots found from two neighbouring brackets (a root on a grid point) counted once."""
    kept: list[float] = []
    for root in roots:
        if not kept or abs(root - kept[-1]) > 1e-12 * abs(root):
            kept.append(root)
    return kept


def softmax_starts(weight: Tensor, grad: Tensor, bias_grad: Tensor | None, bias: Tensor | None, labels: list[int],
                   scale: int) -> list[HeadStart]:  # fmt: skip
    """Every (label, root) hypothesis for the head with weight (C, n), weight gradient (C, n) and, with a bias,
    the bias (C,) and its gradient (C,). All tensors in the solve dtype."""
    starts = []
    eye = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
    if bias_grad is not None:
        k = bias_grad
        x = (k @ grad) / (k @ k)
        z = weight @ x + bias
        return [HeadStart(label, k, z, {"label": label, "g_label": float(k[label]) * scale})
                for label in _bias_labels(labels, k, z)]  # fmt: skip
    if len(labels) > 1 and all(not bool(grad[label].any()) for label in labels):  # silent rows: the largest logit
        logits = weight @ grad.sum(dim=0)  # the sum of the non-zero rows is a positive multiple of x
        labels = [max(labels, key=lambda label: float(logits[label]))]
    silent = ~grad.reshape(grad.shape[0], -1).any(dim=1)  # classes whose p_j the client's precision rounded to 0
    for label in labels:
        for a, from_rows in label_row_estimates(grad, label, scale):
            v = (weight @ a).double().cpu().numpy()
            for gamma in gamma_roots(v, label):
                x = a / gamma
                z = weight @ x
                k = (torch.softmax(z, dim=0) - eye[label]) / scale
                if from_rows:  # the client's rounded g_t, which its lower layers' gradients were computed from
                    k[label] = (grad[label] @ x) / (x @ x)
                k[silent] = 0.0  # as the client had it: a tiny g_j would make its zero row an equation x = 0
                info = {"label": label, "g_label": gamma, **({"g_label_from": "other_rows"} if from_rows else {})}
                starts.append(HeadStart(label, k, z, info))
    return starts


def _bias_labels(labels: list[int], k: Tensor, z: Tensor) -> list[int]:
    """With a bias the error vector itself is known: the label's entry is its only negative one (with two classes
    the signs of the rows alone leave both), or, where the client's precision rounded it to zero, the zero entry
    of the largest logit."""
    negative = [label for label in labels if float(k[label]) < 0]
    return negative or [max(labels, key=lambda label: float(z[label]))]


def label_row_estimates(grad: Tensor, label: int, scale: int) -> list[tuple[Tensor, bool]]:
    """Estimates of a = g_t x (in the loss's unreduced scale) from a bias-free head's weight gradient: the label's
    own row, and minus the sum of the other rows when the two disagree beyond rounding (a confident prediction,
    or noise); the flag says which (True: from the other rows)."""
    own = grad[label] * scale
    others = torch.ones(grad.shape[0], dtype=torch.bool, device=grad.device)
    others[label] = False
    rest = -grad[others].sum(dim=0) * scale
    if not bool(own.any()):  # the label's row rounded to zero: the other rows are all there is
        return [(rest, True)]
    if float((own - rest).norm()) <= AGREE * float(rest.norm()):
        return [(own, False)]
    return [(own, False), (rest, True)]
