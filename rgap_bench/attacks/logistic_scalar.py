"""Closed-form inversion of the output layer's scalar equation for the binary logistic loss.

With no bias, <w, dL/dw> = mu * dL/dmu = -u / (1 + e^u) =: f(u), u = y * mu. Writing v = -u - c turns
c = f(u) into v e^v = c e^-c, so u = -c - W(c e^-c) with W the Lambert W function: the principal branch for
c >= 0 (unique root, u <= 0: a wrongly classified sample) and both real branches for c in (F_MIN, 0).
"""

from __future__ import annotations

import math

from scipy.special import lambertw

from rgap_bench.errors import InvalidUpdateError

U_STAR = 1.2784645427610738  # root of 1 + e^u = u e^u, where f is smallest
F_MIN = 1.0 - U_STAR  # f(U_STAR) = 1 - U_STAR
_BRANCH_POINT = math.nextafter(-math.exp(-1.0), 0.0)  # scipy's W is NaN at -1/e itself, finite just above it


def logistic_f(u: float) -> float:
    """f(u) = -u / (1 + e^u), written to stay finite for large |u|."""
    if u > 0:
        e = math.exp(-u)
        return -u * e / (1.0 + e)
    return -u / (1.0 + math.exp(u))


def logistic_weight(u: float) -> float:
    """1 / (1 + e^u) = -dL/du without overflow: that very expression up to u = 700 (so results keep their bits),
    e^-u beyond, where the two agree to 1e-304."""
    return 1.0 / (1.0 + math.exp(u)) if u <= 700.0 else math.exp(-u)


def _lambertw_lower(x: float) -> float:
    """W_-1(x) for -1/e <= x < 0. scipy returns NaN or -inf for subnormal x (|x| < ~1e-316, i.e. c that small):
    there Newton on w + ln(-w) = ln(-x), from its asymptote ln(-x) - ln(-ln(-x)), converges in a few steps."""
    w = lambertw(x, -1).real
    if math.isfinite(w):
        return w
    log_x = math.log(-x)
    w = log_x - math.log(-log_x)
    for _ in range(6):
        w -= (w + math.log(-w) - log_x) / (1.0 + 1.0 / w)
    return w


def invert_logistic_scalar(c: float) -> list[float]:
    """All real u with f(u) = c: one root for c >= 0, two for F_MIN < c < 0 (smaller first)."""
    if not math.isfinite(c):
        raise InvalidUpdateError(f"<w, dL/dw> of the output layer is {c}; the update contains NaN or Inf")
    if c >= 0:
        return [-c - lambertw(c * math.exp(-c), 0).real]
    if c < F_MIN:
        raise InvalidUpdateError(
            f"<w, dL/dw> of the output layer is {c:.6g}, below the smallest value {F_MIN:.6f} a logistic loss can "
            "produce: the update is not an unperturbed binary-logistic gradient (noise defence, another loss, or a "
            "bias in the output layer)"
        )
    arg = max(c * math.exp(-c), _BRANCH_POINT)  # c just above F_MIN can round onto or past -1/e
    return [-c - lambertw(arg, 0).real, -c - _lambertw_lower(arg)]
