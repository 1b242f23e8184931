"""The output step for a softmax cross-entropy head z = W x (+ b), C >= 2 classes, one sample.

The head's error is g = (softmax(z) - onehot(t)) / s (s: the loss's reduction scale), with g_t < 0 and every other
g_j >= 0, and its weight gradient is g x^T: every row is a multiple of x, the label's row with the other sign (the
label, as in iDLG). With a bias, dL/db = g gives the error directly and x = g^T dW / |g|^2. Without one only the
direction of x is known, x = a / gamma with a = s dW[t] and gamma = s g_t in (-1, 0); gamma then solves the scalar
equation 1 - softmax(W a / gamma)_t = -gamma, found by bracketing sign changes on a log grid of -gamma and refining
each with Brent's method. Every root is a candidate: the recursion's consistency decides between them.
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


def label_candidates(rows: Tensor) -> list[int]:
    """Classes whose gradient row points against every other non-zero row (rows: (C, ...) multiples of x, or the
    bias gradient). With C >= 3 this is the label alone; with two non-zero rows both qualify. Noise (a defence)
    can leave none (the caller then takes the largest row: |g_t| is the sum of the others)."""
    flat = rows.reshape(rows.shape[0], -1).double()
    gram = flat @ flat.T
    norms = gram.diagonal()
    if not bool((norms > 0).any()):
        raise InvalidUpdateError(
            "the output layer's gradient is zero: the client's loss is already at its minimum, nothing to invert"
        )
    off = gram - torch.diag(norms)
    opposed = (norms > 0) & (off <= 0).all(dim=1)
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
    for label in labels:
        if bias_grad is not None:
            k = bias_grad
            x = (k @ grad) / (k @ k)
            z = weight @ x + bias
            starts.append(HeadStart(label, k, z, {"label": label, "g_label": float(k[label]) * scale}))
            continue
        a = grad[label] * scale
        v = (weight @ a).double().cpu().numpy()
        for gamma in gamma_roots(v, label):
            z = weight @ (a / gamma)
            k = (torch.softmax(z, dim=0) - eye[label]) / scale
            starts.append(HeadStart(label, k, z, {"label": label, "g_label": gamma}))
    return starts
