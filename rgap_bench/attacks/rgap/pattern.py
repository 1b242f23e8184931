"""The activation pattern of a layer's output under noise: which LeakyReLU slope each entry of k was given.

k_i = (W_{i+1}^T k_{i+1}) * sigma'(z_i) takes sigma' from the sign of z_i = sigma^-1(x_{i+1}), reconstructed from the
layer above. Noise leaves that sign uncertain where |z_i| is small, and one wrong slope changes an entry of k by
(1 - slope) of its value: with a few thousand entries, two flipped signs already put a 2% error into every
gradient row of the layer, far more than the gradient's own noise. So after the layer is solved, the entries whose
sign is in doubt (|z| within twice the misfit between z and W x) get their derivative refitted to the
layer's own gradient rows: per filter a tiny least squares in those entries (the rows are linear in k for a fixed
x), clipped to [slope, 1]; then the layer is solved again. A clean update leaves no entry in doubt and nothing
changes.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgap_bench.attacks.rgap.layers import RGAPLayer
from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.operators import ConvSystem

S = TypeVar("S")
# An entry's sign is in doubt when |z| < DOUBT x the typical misfit between z and W x (measured on cnn6 at relative
# noise 7.5e-4: 2 gives 23.9 dB, 3 gives 21.5, 5 gives 21.0; rounding the refit to {slope, 1} or pulling it towards
# the first guess did worse: the refit is noisy, its clipped least-squares value is the better estimate)
DOUBT = 2.0
# The typical misfit is a robust scale, 1.4826 x the median |misfit| (the rms for Gaussian misfits): a few wrong
# signs leave gross misfits that inflate the rms, and a band that wide puts hundreds of right signs in doubt, whose
# refit then goes astray (cnn6 N(0, 0.01) photo 3 at 1e-3: 409 in doubt, 43 wrong after the refit, 32.6 dB; with the
# median 34.8 dB; 5 photos x 2 inits x 1e-5..1e-1: the 1e-4 -> 1e-3 drop at N(0, 0.01) 20.4 -> 19.8 dB, fcn3 the same
# within 0.001 dB; docs/noise.md)
MAD_TO_STD = 1.4826
# Refit-and-solve rounds: the refit and the solve feed each other (x from k, k's doubtful entries from x) and their
# error shrinks by about half a round. cnn6 photos 0-1, relative noise 1e-4 / 1e-3 (mean dB): 2 rounds 40.5 / 25.9,
# 5 rounds 51.7 / 30.7, 10 rounds 51.8 / 31.2. With a wrong slope the refit can still be converging at round 5
# (cnn6 N(0, 0.01) photo 3 at 1e-4: conv2's input error 6.2e-3 -> 2.5e-3 over rounds 0-5, about 15 % a round), and
# the best round is kept anyway: 10 rounds take that photo 57.0 -> 59.6 dB; 5 photos x 2 inits x 1e-5..1e-2, no
# mean lower, no photo more than 0.35 dB lower (docs/noise.md). A round is one more solve of the layer; it stops
# once nothing is in doubt, so a clean update costs nothing.
ROUNDS = 10
# A filter whose scaled gradient rows leave more than ROBUST x the median filter's residual norm is an outlier.
# Noise alone cannot do that: every filter has the same C kh kw unit-norm rows with the same noise, so their residual
# norms concentrate around the median within ~1/sqrt(2 C kh kw) (10% on cnn6's image layer, 48 rows; less above);
# twice the median is a model error, i.e. a wrong k. Weight min(1, ROBUST x median / residual): Huber's weight on
# the filter's residual norm, so an outlier's rows count as if their residual were ROBUST x the median.
ROBUST = 2.0
# Reweighting rounds (iteratively reweighted least squares): the weights come from the previous solve's residuals;
# on cnn6 the outlier's weight settles in 2-3 rounds (0.2, 0.03, 0.02), and a round with every weight 1 stops early
ROBUST_ROUNDS = 3


@dataclass(frozen=True)
class PatternFit:
    """What the refit did: how many entries were in doubt and how many changed derivative."""

    doubtful: int
    changed: int
    rounds: int


def forward(layer: RGAPLayer, x: Tensor, dtype: torch.dtype) -> Tensor:
    """W x (+ b): the layer's pre-activation from its solved input, shaped like its output."""
    op = layer.op
    weight = op.weight.detach().to(dtype)
    bias = op.bias.detach().to(dtype) if op.bias is not None else None
    if isinstance(op, nn.Conv2d):
        return F.conv2d(x.reshape(1, *layer.in_shape), weight, bias, op.stride, op.padding)[0]
    out = weight @ x.reshape(-1)
    return (out + bias if bias is not None else out).reshape(layer.out_shape)


def _patches(layer: RGAPLayer, x: Tensor) -> Tensor:
    """(P, L): the input patch each output position sees, in the weight's (C, kh, kw) order; a linear layer has
    one position whose patch is the whole input."""
    op = layer.op
    if isinstance(op, nn.Conv2d):
        return F.unfold(x.reshape(1, *layer.in_shape), op.kernel_size, padding=op.padding, stride=op.stride)[0]
    return x.reshape(-1, 1)


def in_doubt(z: Tensor, misfit: Tensor) -> Tensor:
    """The entries whose sign the misfit between z and W x leaves in doubt: |z| < DOUBT x its robust scale."""
    return z.abs() < DOUBT * MAD_TO_STD * torch.quantile(misfit.abs().flatten(), 0.5)  # (even count: the midpoint)


def refit_derivative(layer: RGAPLayer, x: Tensor, back_k: Tensor, d: Tensor, doubt: Tensor) -> Tensor:
    """The derivative d (shaped like the output) with its doubtful entries refitted to the gradient rows at x."""
    slope = layer.act.slope
    filters = layer.op.weight.shape[0]
    patches = _patches(layer, x)  # (P, L)
    bk = back_k.reshape(filters, -1)  # (F, L)
    dd = d.reshape(filters, -1).clone()
    grad = layer.grad.reshape(filters, -1)  # (F, P)
    flags = doubt.reshape(filters, -1)
    for f in torch.nonzero(flags.any(dim=1)).flatten().tolist():
        where = torch.nonzero(flags[f]).flatten()
        fixed = dd[f].clone()
        fixed[where] = 0
        residual = grad[f] - patches @ (bk[f] * fixed)  # what the doubtful entries must explain
        cols = patches[:, where] * bk[f, where]  # (P, |A|)
        fit = torch.linalg.lstsq(cols, residual[:, None], driver="gelsd" if cols.device.type == "cpu" else None)
        dd[f, where] = fit.solution[:, 0].clamp(min(slope, 1.0), max(slope, 1.0))
    return dd.reshape(d.shape)


def filter_residuals(layer: RGAPLayer, k: Tensor, x: Tensor, dtype: torch.dtype) -> Tensor:
    """(F,): the norm of each filter's scaled (unit-norm) gradient-row residual at the conv layer's input x."""
    weight = layer.op.weight.detach().to(dtype)
    system = ConvSystem(weight, k.reshape(layer.out_shape), layer.grad, None, layer.geometry, True, layer.pool)
    residual = system.grad_rows(x.reshape(layer.in_shape)) - layer.grad * system.grad_scale
    return residual.pow(2).sum(dim=(1, 2, 3)).sqrt()


def filter_weights(residuals: Tensor) -> Tensor | None:
    """(F, 1, 1, 1): each filter's gradient-row weight, min(1, ROBUST x median / residual); None when no filter is
    an outlier (or the median residual is 0: an exact fit has none)."""
    median = residuals.median()
    if float(median) <= 0:
        return None
    weight = (ROBUST * median / residuals).clamp(max=1.0)
    return None if bool((weight == 1).all()) else weight.reshape(-1, 1, 1, 1)


def settle_pattern(
    layer: RGAPLayer,
    back_k: Tensor,
    z: Tensor,
    solve: Callable[[Tensor], S],
    first: S,
    x_of: Callable[[S], Tensor],
    dtype: torch.dtype,
    rounds: int = ROUNDS,
    keep_best: bool = False,
) -> tuple[Tensor, S, PatternFit]:
    """Refit the doubtful derivatives of `layer`'s output and re-solve. `solve(k)` solves the layer for k, `first`
    is its solve for the sign pattern of z (z holds the bias, as W x + b does); returns the final k, solve and fit.
    `refit_rounds` is the same work with its solves asked of the caller."""
    steps = refit_rounds(layer, back_k, z, first, x_of, dtype, rounds, keep_best)
    try:
        k = next(steps)
        while True:
            k = steps.send(solve(k))
    except StopIteration as done:
        return done.value


def refit_rounds(layer: RGAPLayer, back_k: Tensor, z: Tensor, first: S, x_of: Callable[[S], Tensor],
                 dtype: torch.dtype, rounds: int = ROUNDS,
                 keep_best: bool = False) -> Generator[Tensor, S, tuple[Tensor, S, PatternFit]]:  # fmt: skip
    """`settle_pattern`'s rounds, yielding each k to solve the layer for and taking its solve back (so that the
    recursion's driver can batch these solves with other samples'); returns the final k, solve and fit.

    `keep_best`: return the round whose solve fits the weight rows best (the rms misfit between z and W x, which
    does not depend on k, so rounds with different k compare fairly; the first, unrefitted solve included) instead
    of the last. The rounds do not always improve: a refit can trust a wrong sign again, and the error then grows
    over the following rounds (cnn6 photo 2, relative noise 1e-3: 30.3 dB from the last round, 35.0 from the best)."""
    act = layer.act
    d0 = act.derivative(z)
    if not isinstance(act, PiecewiseLinear) or act.slope == 1.0:
        return back_k * d0, first, PatternFit(0, 0, 0)
    d, result = d0, first
    best: tuple[float, Tensor, S] | None = None
    doubtful, done = 0, 0
    for step in range(rounds + 1):
        misfit = forward(layer, x_of(result), dtype) - z
        rms = misfit.pow(2).mean().sqrt()
        if keep_best and (best is None or float(rms) < best[0]):
            best = (float(rms), d, result)
        doubt = in_doubt(z, misfit)
        if step == rounds or not bool(doubt.any()):
            break
        doubtful = max(doubtful, int(doubt.sum()))
        d = refit_derivative(layer, x_of(result), back_k, d0, doubt)
        result = yield back_k * d
        done += 1
    if best is not None:
        d, result = best[1], best[2]
    changed = int(((d - d0).abs() > 0.5 * abs(1 - act.slope)).sum())
    return back_k * d, result, PatternFit(doubtful, changed, done)
