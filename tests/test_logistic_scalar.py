import math

import numpy as np
import pytest

from rgap_bench.attacks.logistic_scalar import F_MIN, U_STAR, invert_logistic_scalar, logistic_f
from rgap_bench.errors import InvalidUpdateError


def brute_force_roots(c: float) -> list[float]:
    """Every sign change of f(u) - c on a fine grid, refined by bisection: no use of the closed form."""
    grid = np.linspace(-60, 60, 240001)
    values = np.array([logistic_f(u) for u in grid]) - c
    roots = []
    positive = values >= 0
    for i in np.nonzero(positive[:-1] != positive[1:])[0]:
        lo, hi = grid[i], grid[i + 1]
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            if (logistic_f(mid) - c >= 0) == (logistic_f(lo) - c >= 0):
                lo = mid
            else:
                hi = mid
        roots.append(0.5 * (lo + hi))
    return roots


def test_minimum_of_f():
    assert abs(1 + math.exp(U_STAR) - U_STAR * math.exp(U_STAR)) < 1e-12
    assert logistic_f(U_STAR) == pytest.approx(F_MIN, abs=1e-14)
    assert logistic_f(U_STAR + 1e-3) > F_MIN and logistic_f(U_STAR - 1e-3) > F_MIN


@pytest.mark.parametrize("u", [-30.0, -5.0, -1.0, -0.1, -1e-4])
def test_negative_logit_product_has_one_root(u):
    c = logistic_f(u)
    assert c > 0
    roots = invert_logistic_scalar(c)
    assert len(roots) == 1
    assert roots[0] == pytest.approx(u, rel=1e-10, abs=1e-12)
    assert roots == pytest.approx(brute_force_roots(c), abs=1e-8)


@pytest.mark.parametrize("u", [0.3, 1.0, 2.0, 3.0, 8.0])
def test_positive_logit_product_has_two_roots(u):
    c = logistic_f(u)
    assert F_MIN < c < 0
    roots = invert_logistic_scalar(c)
    assert len(roots) == 2
    assert min(abs(r - u) for r in roots) < 1e-9 * max(1.0, u)
    assert sorted(roots) == pytest.approx(brute_force_roots(c), abs=1e-7)
    assert roots[0] < U_STAR < roots[1]


def test_paper_digest_examples():
    assert invert_logistic_scalar(logistic_f(-5.0))[0] == pytest.approx(-5.0)
    assert invert_logistic_scalar(-0.14228)[1] == pytest.approx(3.0, abs=1e-4)


@pytest.mark.parametrize("c", [-0.5, float("nan"), float("inf")])
def test_impossible_values_raise(c):
    with pytest.raises(InvalidUpdateError):
        invert_logistic_scalar(c)
