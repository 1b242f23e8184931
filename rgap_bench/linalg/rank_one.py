"""A one-sample linear layer's weight gradient is an outer product, dL/dW = k x^T: rank one whatever the noise.

Gaussian noise on the update spreads evenly over every singular direction of the (out x n) gradient, while the signal
lives in one: the top singular pair. Truncating the spectrum there keeps the signal and about a min(out, n)-th of
the noise, so the input's direction comes from the gradient alone, and only its length and sign need k: the least
squares on the unscaled gradient rows, x = v <G v, k> / ||k||^2 (maximum likelihood for i.i.d. noise on G given k).
Row-scaled least squares (each row divided by its k_i, what a clean solve uses) would instead weigh the rows with the
smallest |k_i|, the noisiest after division, as much as the best ones (docs/noise.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class RankOneFit:
    """The input recovered from a rank-one gradient, and how well the gradient's spectrum separated the signal."""

    x: Tensor  # (n,)
    iterations: int  # power iterations to the top right singular vector
    converged: bool
    gap: float  # ||G - sigma_1 u v^T||_F / sigma_1: the noise left beside the signal (0 on a clean gradient)


def top_right_singular_vector(matrix: Tensor, tol: float = 1e-13, max_iter: int = 500) -> tuple[Tensor, int, bool]:
    """The top right singular vector of `matrix` by power iteration on M^T M, started from its largest row (on a
    near rank-one matrix that row is already close, and each step shrinks the rest by (sigma_2 / sigma_1)^2)."""
    start = matrix[int(matrix.pow(2).sum(1).argmax())]
    v = start / start.norm()
    for step in range(1, max_iter + 1):
        w = matrix.T @ (matrix @ v)
        w = w / w.norm()
        if float((w - v).norm()) <= tol:
            return w, step, True
        v = w
    return v, max_iter, False


def rank_one_input(grad: Tensor, k: Tensor) -> RankOneFit:
    """x from the gradient rows `grad` (out x n) of outputs whose errors `k` (out,) are not zero."""
    v, iterations, converged = top_right_singular_vector(grad)
    gv = grad @ v
    x = v * (gv @ k) / (k @ k)
    sigma2 = float(gv @ gv)
    rest = max(float(grad.pow(2).sum()) - sigma2, 0.0)
    gap = (rest / sigma2) ** 0.5 if sigma2 > 0 else float("inf")
    return RankOneFit(x, iterations, converged, gap)
