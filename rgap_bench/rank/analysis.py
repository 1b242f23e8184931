"""Architecture rank analysis: per-layer counts, bound and numerical rank, carried down into one risk index.

Definitions (docs/rank_analysis.md has the derivation):
* d_i = n_i - rank_i: the null space of layer i's own system, what R-GAP's layer-by-layer recursion faces.
* e_i (carry-down): e_top = d_top; e_i = min(n_i, d_i + lost_i), where lost_i is the rank the layer loses when
  e_{i+1} directions of its output z_i = W_i x_i are unknown (they cost weight equations; a layer with surplus
  weight equations absorbs them). e_0 is what stays undetermined in the input when every gradient is used jointly.
* ra_index = max_i e_i / n_i: 0 means every step of the recursion is determined (the architecture is predicted to
  leak its input exactly); a positive value is the largest share of a layer's input no equation reaches.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rgap_bench.linalg.constraints import ConvGeometry
from rgap_bench.models.checks import pool_size, unsupported_reason
from rgap_bench.models.layers import SequentialNet
from rgap_bench.rank.counts import LayerCounts, conv_counts, linear_counts
from rgap_bench.rank.numeric import RankResult, conv_rank, linear_rank

log = logging.getLogger(__name__)

PROBES = ("input", "gaussian")


@dataclass
class LayerRank:
    """One row of the rank table (`rank.json`, console, W&B)."""

    index: int
    layer: str
    in_shape: list[int]
    unknowns: int
    unknowns_padded: int
    padding_constraints: int
    gradient_constraints: int
    weight_constraints: int
    bias_equations: int  # one per output unit / channel of a layer with a bias: they fix dL/dz, not the input
    naive_deficiency: int
    dependencies: int
    bound: int
    predicted_deficiency: int
    bound_sharp: bool
    rank: int | None
    deficiency: int | None  # null-space dimension of the layer's own system
    sigma_min_rel: float | None
    carried_deficiency: int  # e_i, after the deficits above are carried down
    method: str
    time_s: float
    note: str = ""
    # False below a ReLU: the weight rows counted assume every unit alive, an upper bound; each input's dead units
    # remove theirs, and how many depends on the input, which the analysis does not see
    weight_rows_exact: bool = True

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RankReport:
    """Architecture-level result; `as_dict()` is the content of `rank.json`."""

    model: str
    input_shape: list[int]
    probe: str
    seed: int
    layers: list[LayerRank]
    ra_index: float
    worst_layer: int | None
    input_undetermined: int
    input_null_fraction: float
    rgap_supported: bool
    reason: str | None
    verdict: str
    time_s: float
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["layers"] = [layer.as_dict() for layer in self.layers]
        return out


def describe(op: nn.Module, pool: int = 1) -> str:
    if isinstance(op, nn.Linear):
        return f"linear {op.in_features}>{op.out_features}"
    if isinstance(op, nn.Conv2d):
        pooled = f" avgpool{pool}" if pool > 1 else ""
        return f"conv {op.in_channels}>{op.out_channels} k{op.kernel_size[0]} s{op.stride[0]} p{op.padding[0]}{pooled}"
    return op.__class__.__name__


def _pool(block: nn.Module, i: int) -> int:
    """A block's average-pooling factor (1: none); R-GAP's check refuses any other pooling with its reason."""
    return pool_size(getattr(block, "pool", nn.Identity()), block.op, f"layer {i} ({block.op.__class__.__name__})")


def probe_errors(model: SequentialNet, probe: str, seed: int) -> tuple[list[Tensor], list[Tensor]]:
    """Pre-activations z_i and back-propagated errors k_i = dL/dz_i at the current weights, for a generic input.

    `input`: a seeded U[0, 1] image through the model, with the paper's loss and a label against the prediction
    (cross-entropy against a non-predicted class for multi-logit heads). `gaussian`: the same z, but every k_i
    replaced by seeded N(0, 1) noise. Both are generic: the counts and bounds do not depend on which.
    """
    gen = torch.Generator().manual_seed(seed)
    net = copy.deepcopy(model).to(torch.float64)
    x = torch.rand((1, *model.input_shape), generator=gen, dtype=torch.float64)
    zs: list[Tensor] = []
    h = x
    for block in net.blocks:
        if isinstance(block.op, nn.Linear) and h.dim() > 2:
            h = h.flatten(1)
        z = block.pool(block.op(h)) if hasattr(block, "pool") else block.op(h)  # pooled: the pooled pre-activation
        z.retain_grad()
        zs.append(z)
        h = block.act(z)
    logits = h.flatten(1)
    if logits.shape[1] == 1:
        target = (logits[:, 0] <= 0).to(torch.float64)
        loss = F.binary_cross_entropy_with_logits(logits[:, 0], target)
    else:
        loss = F.cross_entropy(logits, (logits.argmax(dim=1) + 1) % logits.shape[1])
    net.zero_grad(set_to_none=True)
    loss.backward()
    ks = [z.grad[0].detach() for z in zs]
    if probe == "gaussian":
        ks = [torch.randn(k.shape, generator=gen, dtype=torch.float64) for k in ks]
    return [z[0].detach() for z in zs], ks


def _is_relu(act: nn.Module) -> bool:
    return isinstance(act, nn.ReLU) or (isinstance(act, nn.LeakyReLU) and act.negative_slope == 0)


def _known_outputs(act: nn.Module, z: Tensor) -> np.ndarray | None:
    """Output units whose z a server can read back from the layer above; ReLU hides the negative ones."""
    if _is_relu(act):
        return (z.reshape(-1) > 0).numpy()
    return None


def _relu_note(z: Tensor | None, weight_rows: int, numeric: bool) -> str:
    """What the counts of a ReLU layer mean: an upper bound on the weight rows; the probe's dead units, if any."""
    note = (
        f"ReLU: the {weight_rows} weight rows counted are an upper bound; each input's dead units remove theirs "
        "(how many depends on the input)"
    )
    if numeric and z is not None:
        dead = int((z.reshape(-1) <= 0).sum())
        note += f"; the measured rank drops the probe input's {dead} dead units, another input differs"
    return note


def _counts(op: nn.Module, in_shape: tuple[int, ...], pool: int) -> LayerCounts:
    bias = op.bias is not None
    if isinstance(op, nn.Linear):
        return linear_counts(op.in_features, op.out_features, bias=bias)
    return conv_counts(tuple(in_shape), op.out_channels, tuple(op.kernel_size), tuple(op.stride), tuple(op.padding),
                       pool=pool, bias=bias)  # fmt: skip


def _numeric(op: nn.Module, act: nn.Module, in_shape: tuple[int, ...], z: Tensor, k: Tensor,
             dense_max: int, rcond: float, pool: int) -> RankResult:  # fmt: skip
    weight = op.weight.detach().double()
    rows = _known_outputs(act, z)
    if isinstance(op, nn.Linear):
        return linear_rank(weight, k, rows, rcond=rcond)
    geom = ConvGeometry(tuple(in_shape), tuple(op.kernel_size), tuple(op.stride), tuple(op.padding))
    k = k.reshape(weight.shape[0], -1)
    return conv_rank(weight, k, geom, rows, dense_max=dense_max, rcond=rcond, pool=pool)


def analyse_model(
    model: SequentialNet,
    *,
    numeric: bool = True,
    probe: str = "input",
    seed: int = 0,
    dense_max: int = 4000,
    rcond: float = 1e-10,
    measured: dict[int, dict[str, Any]] | None = None,
) -> RankReport:
    """Rank analysis of every layer. `measured` (index -> rank/sigma/method) reuses ranks an attack already has."""
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    start = time.perf_counter()
    shapes = list(model.block_input_shapes)
    zs, ks = probe_errors(model, probe, seed) if numeric else ([None] * len(shapes), [None] * len(shapes))
    rows: list[LayerRank] = []
    counts: list[LayerCounts] = []
    net = copy.deepcopy(model).to(torch.float64)
    for i, block in enumerate(net.blocks):
        op = block.op
        if not isinstance(op, nn.Linear | nn.Conv2d):
            raise ValueError(f"layer {i}: rank analysis covers nn.Conv2d and nn.Linear, got {op.__class__.__name__}")
        pool = _pool(block, i)
        c = _counts(op, shapes[i], pool)
        counts.append(c)
        result = RankResult(None, None, "")
        if measured and i in measured and measured[i].get("rank") is not None:
            m = measured[i]
            result = RankResult(int(m["rank"]), m.get("sigma_min_rel"), f"attack ({m.get('method', 'measured')})")
        elif numeric:
            result = _numeric(op, block.act, shapes[i], zs[i], ks[i], dense_max, rcond, pool)
        if result.rank is None:  # too large for an exact rank: the bound is the estimate
            result.rank = c.bound
            result.method = "estimate (bound)" if numeric else "count (bound)"
        note = ""
        if result.rank != c.bound:
            rel = "below" if result.rank < c.bound else "above"
            note = f"measured rank {rel} the bound by {abs(c.bound - result.rank)}"
        relu = _is_relu(block.act)
        if relu:
            note = "; ".join(filter(None, (note, _relu_note(zs[i], c.weight_constraints, numeric))))
        rows.append(
            LayerRank(
                index=i, layer=describe(op, pool), in_shape=list(shapes[i]), unknowns=c.unknowns,
                unknowns_padded=c.unknowns_padded, padding_constraints=c.padding_constraints,
                gradient_constraints=c.gradient_constraints, weight_constraints=c.weight_constraints,
                bias_equations=c.bias_equations,
                naive_deficiency=c.naive_deficiency, dependencies=c.dependencies, bound=c.bound,
                predicted_deficiency=c.predicted_deficiency, bound_sharp=c.sharp, rank=result.rank,
                deficiency=c.unknowns - result.rank, sigma_min_rel=result.sigma_min_rel, carried_deficiency=0,
                method=result.method, time_s=result.time_s, note=note, weight_rows_exact=not relu,
            )
        )  # fmt: skip
    _carry_down(rows, counts)
    ratios = [row.carried_deficiency / row.unknowns for row in rows]
    worst = int(np.argmax(ratios)) if rows and max(ratios) > 0 else None
    reason = unsupported_reason(model)  # R-GAP's own check, with its messages
    ra = float(max(ratios)) if rows else 0.0
    report = RankReport(
        model=model.name, input_shape=list(model.input_shape), probe=probe if numeric else "none", seed=seed,
        layers=rows, ra_index=ra, worst_layer=worst, input_undetermined=rows[0].carried_deficiency,
        input_null_fraction=rows[0].carried_deficiency / rows[0].unknowns, rgap_supported=reason is None,
        reason=reason, verdict=verdict(rows, ra, reason), time_s=time.perf_counter() - start,
    )  # fmt: skip
    return report


def _carry_down(rows: list[LayerRank], counts: list[LayerCounts]) -> None:
    """e_i = min(n_i, d_i + rank the layer loses when e_{i+1} of its output directions are unknown)."""
    upper = 0
    for row, c in zip(reversed(rows), reversed(counts), strict=True):
        lost = max(c.carried_rank(0) - c.carried_rank(upper), 0)
        row.carried_deficiency = min(row.unknowns, (row.deficiency or 0) + lost)
        upper = row.carried_deficiency


def verdict(rows: list[LayerRank], ra_index: float, reason: str | None) -> str:
    relu = [row.index for row in rows if not row.weight_rows_exact]
    if ra_index == 0:
        text = "every layer is determined: the gradient is predicted to reveal the input exactly"
        if relu:
            text = (
                "every layer is determined as analysed (ReLU: see below): the gradient is predicted to reveal the input"
            )
    else:
        worst = max(rows, key=lambda r: r.carried_deficiency / r.unknowns)
        text = (
            f"layer {worst.index} ({worst.layer}) leaves {worst.carried_deficiency} of {worst.unknowns} input "
            f"directions undetermined: R-GAP's layer-wise recursion cannot be exact"
        )
        if rows[0].carried_deficiency == 0:
            text += "; jointly (all layers' equations on the input) the input is still determined"
    if relu:
        text += (
            f". Layers {relu} have ReLU: their weight rows are counted as if every unit were alive, an upper bound; "
            "each input's dead units drop theirs, so the ranks can be lower on data (R-GAP's layers.json reports "
            "the rows dropped and the rank reached per input)"
        )
    if reason:
        text += f". R-GAP cannot attack this model as is: {reason}"
    return text
