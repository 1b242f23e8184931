"""How an attack grades its own result (`exact`, `approximate`, `failed`, `unsupported`) and says why.

A benchmark must not report a number as a success when the solve behind it did not converge: every layer and every
run carries a status and a reason, decided here from what the attack itself can see (never the private batch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import Tensor

from rgap_bench.types import STATUSES, Status


def worst(statuses: Iterable[Status]) -> Status:
    """The worst of several statuses (a run is as trustworthy as its worst layer); exact when there are none."""
    return max(statuses, key=STATUSES.index, default="exact")


def join(reasons: Iterable[str]) -> str:
    """One line from several reasons, empty ones left out."""
    return "; ".join(r for r in reasons if r)


def non_finite(inputs: Tensor) -> str:
    """The reason a reconstruction is unusable, or "" when every value is finite."""
    bad = int((~inputs.isfinite()).sum())
    return f"{bad} of {inputs.numel()} reconstructed values are NaN or Inf" if bad else ""


def matching_status(distance: float, tolerance: float, inputs: Tensor, detail: str = "") -> tuple[Status, str]:
    """A gradient match is exact only at the attack's own stopping tolerance (attack.tolerance: the loop stops
    there because nothing better can be told apart); any larger distance is an approximation."""
    broken = non_finite(inputs)
    if broken:
        return "failed", broken
    if not math.isfinite(distance):
        return "failed", "the gradient distance is not finite: matching diverged (lower attack.lr)"
    if distance <= tolerance:
        return "exact", f"gradient distance {distance:.2e} <= attack.tolerance {tolerance:.0e}"
    return "approximate", f"gradient distance {distance:.2e} > attack.tolerance {tolerance:.0e} {detail}".strip()
