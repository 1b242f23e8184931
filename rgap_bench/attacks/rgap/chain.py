"""R-GAP's joint step on a fully connected net: once every layer has its rank-one fit, the image is refined against
all of them at once (`linalg/chain_refine.py`, `attack.chain_refine`)."""

from __future__ import annotations

import dataclasses

from torch import Tensor

from rgap_bench.attacks.rgap.layers import RGAPLayer
from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.chain_refine import ChainLink, refine_chain
from rgap_bench.types import LayerReport


def refinable(layers: list[RGAPLayer], reports: list[LayerReport]) -> bool:
    """Every layer linear with a piecewise-linear activation below the head, and the image layer's input came from
    the rank-one fit (a noisy one-sample update: `attack.rank_one`)."""
    if len(layers) < 2 or any(layer.is_conv for layer in layers):
        return False
    if not all(isinstance(layer.act, PiecewiseLinear) for layer in layers[:-1]):
        return False
    return reports[0].solver == "rank-one-linear"


def refine_image(layers: list[RGAPLayer], estimates: dict[int, tuple[Tensor, Tensor]],
                 reports: list[LayerReport]) -> tuple[Tensor, list[LayerReport]]:  # fmt: skip
    """The image refined against every layer's estimate (x^_l, k_l); the image layer's report notes the step."""
    xs = [estimates[layer.index][0].reshape(-1) for layer in layers]
    precisions = [float(estimates[layer.index][1].reshape(-1).pow(2).sum()) for layer in layers]
    links = []
    for layer in layers[:-1]:
        weight = layer.op.weight.detach().to(xs[0].dtype)
        bias = None if layer.op.bias is None else layer.op.bias.detach().to(xs[0].dtype)
        links.append(ChainLink(weight.reshape(weight.shape[0], -1), bias, layer.act))
    fit = refine_chain(xs, precisions, links)
    note = (
        f"joint refinement over {len(layers)} layers: {fit.steps} Gauss-Newton steps, image moved {fit.moved_rel:.1e}"
    )
    first = reports[0]
    reports = [dataclasses.replace(first, note="; ".join(n for n in (first.note, note) if n)), *reports[1:]]
    return fit.x.reshape(layers[0].in_shape), reports
