"""Which solver each layer gets, decided before any solve: one small record per layer instead of string flags.

attack.solver=auto (the default): the closed form for a linear layer, PCG for a conv, and for a conv whose rank is
wanted (attack.rank: `exact` always; `auto` up to attack.rank_max_unknowns unknowns, or up to
attack.null_max_unknowns when the counting bound predicts a null space the layer below can absorb) the matrix-free
probe (`solvers.krylov`: PCG with a random probe, the dense path only as its fallback) under rank=auto where no
null space is predicted, the dense factorisation otherwise (from WOODBURY_MIN_UNKNOWNS unknowns under rank=auto:
Woodbury over the banded weight rows, `solvers.woodbury`); no rank is measured where a bound proves the layer
full rank (any size): the gradient rows alone (a tall K), the weight rows' Fourier symbol (a full conv in
polyphase form, `rgap_bench.linalg.symbol`), or the two split by pixel phase (`rgap_bench.linalg.split_bound`); nor
where the dense matrices would not fit in free memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from rgap_bench.attacks.rgap.layers import RGAPLayer
from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.linalg.operators import ConvSystem
from rgap_bench.linalg.resources import dense_memory
from rgap_bench.linalg.split_bound import phase_split_bound
from rgap_bench.linalg.symbol_null import full_polyphase

Strategy = Literal[
    "direct-linear", "pcg", "krylov", "dense", "symbol", "woodbury", "explicit-dense", "explicit-sparse", "lstsq"
]
WOODBURY_MIN_UNKNOWNS = 8192  # from here a deficient conv's null space comes from its symbol or Woodbury, not dense

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerPlan:
    """How one layer is solved, and what is known of its rank before solving."""

    strategy: Strategy
    want_rank: bool  # measure the rank (and the null space) while solving
    known_rank: int | None = None  # full rank established without a factorisation (gradient rows)
    certificate: float | None = None  # a proven lower bound on sigma_min^2 / sigma_max^2, when it proves full rank
    null_hint: int = 0  # the counting bound's deficiency (+ dead ReLU rows), which sizes the null-space search
    proof: str = ""  # what proved it (`rank_method` in layers.json): "gradient-row bound" or "weight-row symbol bound"


def _null_expected(layer: RGAPLayer, options: RGAPOptions) -> bool:
    """A larger layer's rank is measured too when the counting bound predicts a null space that the layer below
    can absorb: the measurement finds the null space to carry down."""
    if not options.carry_null_space or layer.index == 0 or layer.unknowns > options.null_max_unknowns:
        return False
    return layer.predicted_deficiency() > 0


def _full_rank_certificate(system: ConvSystem | None, options: RGAPOptions) -> tuple[float, str] | None:
    """rank=auto: a proven lower bound on sigma_min^2 / sigma_max^2 that clears attack.rcond (the dense path's
    threshold) and what proved it: the gradient rows alone (a tall K), the weight rows' Fourier symbol (a full conv
    in polyphase form: CNN6's conv1), or both split by pixel phase (`linalg.split_bound`: CNN6's conv2); None when
    none does."""
    if system is None or options.rank != "auto":
        return None
    proofs = (
        (system.full_rank_bound, "gradient-row bound"),
        (system.symbol_bound, "weight-row symbol bound"),
        (lambda: phase_split_bound(system), "phase-split bound"),
    )
    for bound, proof in proofs:
        value = bound()
        if value is not None and value > options.rcond:
            return value, proof
    return None


def _strategy(layer: RGAPLayer, want_rank: bool, options: RGAPOptions, rows_dropped: bool = False) -> Strategy:
    """auto: closed form for linear layers, PCG for convs; when a rank is wanted, the matrix-free probe where no
    null space is predicted, the dense path where one is (its basis feeds the joint solve, and PCG on such layers
    can take thousands of iterations: CNN6's conv2 at 64x64; Woodbury instead from WOODBURY_MIN_UNKNOWNS on) or
    under rank=exact (the reference). A layer that
    dropped dead ReLU rows has no prediction (each dropped row can open a direction) and an inconsistent system
    PCG does not settle (LeNet-5's conv1: 3000 iterations at residual 0.8 before the probe gave up): dense."""
    solver = options.solver
    if solver == "auto":
        if not layer.is_conv:
            return "direct-linear"
        if not want_rank:
            return "pcg"
        probe = options.rank == "auto" and layer.predicted_deficiency() == 0 and not rows_dropped
        if probe:
            return "krylov"
        # rank=auto, a large conv on the host, no pooling or dropped rows, with at most n/2 gradient rows (one per
        # weight; Woodbury costs n m^2 against n^3/3): Woodbury over its banded weight rows (CNN6's conv2 at 64x64:
        # m = 3888 for n = 13068); rank=exact keeps the dense reference
        banded = layer.pool == 1 and not rows_dropped and layer.op.weight.device.type == "cpu"
        banded = banded and options.rank == "auto" and layer.unknowns >= WOODBURY_MIN_UNKNOWNS
        if not (banded and 2 * layer.op.weight.numel() <= layer.unknowns):
            return "dense"
        return "symbol" if full_polyphase(layer.geometry) else "woodbury"  # the symbol's null space where it is full
    if solver == "iterative":
        return "pcg" if layer.is_conv else "direct-linear"
    if solver == "dense":
        return "dense" if layer.is_conv else "explicit-dense"
    if solver == "sparse":
        return "explicit-sparse"
    return "lstsq"


def _fits_in_memory(layer: RGAPLayer, dtype: torch.dtype) -> bool:
    memory = dense_memory(layer.unknowns, dtype, layer.op.weight.device)
    if memory.fits():
        return True
    log.warning(
        "layer %d: the dense normal matrix (%d unknowns) needs ~%.1f GB, %.1f GB are free; solving "
        "it iteratively without its rank or null space (lower attack.null_max_unknowns to silence this)",
        layer.index, layer.unknowns, memory.need / 1e9, memory.free / 1e9,
    )  # fmt: skip
    return False


def plan_layer(
    layer: RGAPLayer, k: Tensor, system: ConvSystem | None, options: RGAPOptions, dtype: torch.dtype
) -> LayerPlan:
    """The plan of one layer, given its back-propagated error `k` and (conv layers) its matrix-free system."""
    n = layer.unknowns
    # A linear layer's gradient rows alone pin x down (rank n) as soon as one k[j] != 0: no need to measure.
    determined_by_gradient = not layer.is_conv and bool(torch.any(k != 0))
    want_rank = options.rank == "exact" or (
        options.rank == "auto"
        and not determined_by_gradient
        and (n <= options.rank_max_unknowns or _null_expected(layer, options))
    )
    proven = _full_rank_certificate(system, options)  # (recursion runs a small layer on one CPU thread)
    certificate, proof = proven if proven is not None else (None, "")
    if certificate is not None:
        want_rank = False  # proven full rank (at any size): nothing to measure
    rows_dropped = system is not None and system.alive is not None and not bool(system.alive.all())
    strategy = _strategy(layer, want_rank, options, rows_dropped)
    auto = options.rank == "auto" and options.solver == "auto"
    if strategy == "dense" and auto and not _fits_in_memory(layer, dtype):
        want_rank, strategy = False, "pcg"
    known = n if determined_by_gradient or certificate is not None else None
    hint = layer.predicted_deficiency() if want_rank else 0
    if want_rank and system is not None and system.alive is not None:
        # each dropped weight row (a dead ReLU output) can open one more direction: size the null-space search for
        # it, or the block doubles round after round (LeNet's conv2: ~1500 directions)
        hint = min(hint + int((~system.alive).sum()), layer.unknowns)
    return LayerPlan(strategy, want_rank, known, certificate, hint, proof)
