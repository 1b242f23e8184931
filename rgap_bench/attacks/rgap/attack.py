"""The `attack=rgap` plugin: checks the update, inverts the output layer's scalar, runs the recursion for every
(label, root) hypothesis and keeps the most consistent one."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import torch
from torch import nn

from rgap_bench.attacks.logistic_scalar import F_MIN, U_STAR, invert_logistic_scalar
from rgap_bench.attacks.metadata import check_batch_size, shared_labels
from rgap_bench.attacks.rgap.layers import read_layers
from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.recursion import recurse
from rgap_bench.attacks.rgap.report import run_status
from rgap_bench.errors import InvalidUpdateError, UnsupportedModelError
from rgap_bench.linalg.precision import conv_tf32
from rgap_bench.options import build_options
from rgap_bench.types import ClientUpdate, Reconstruction, UpdateMetadata

log = logging.getLogger("rgap_bench.attacks.rgap")


def choose_candidate(candidates: list[Reconstruction], tolerance: float = 10.0) -> Reconstruction:
    """Pick among (label, root) hypotheses: the most consistent, then the one inside the image range.

    A bias-free LeakyReLU network is positively homogeneous, so when the output scalar has two roots both yield
    exactly consistent reconstructions that differ by a scale; only the public prior that inputs are images in
    [0, 1] tells them apart.
    """

    def finite(value: float) -> float:  # an overflowed solve (NaN) must not win, nor empty the choice
        return value if math.isfinite(value) else math.inf

    floor = min(finite(rec.residual_rel) for rec in candidates)
    consistent = [rec for rec in candidates if finite(rec.residual_rel) <= tolerance * floor + 1e-9]
    return min(consistent, key=lambda rec: finite(rec.range_violation))


def loss_scale(meta: UpdateMetadata) -> int:
    """Everything R-GAP reads of the client's loss: it must be the binary logistic loss (the output step is derived
    for it), and its reduction says by how much the shared gradient was divided (the output scalar is scaled back)."""
    if meta.loss.name != "binary_logistic":
        raise UnsupportedModelError(
            f"R-GAP's output-layer step is derived for the binary logistic loss; got {meta.loss.name!r}. Use "
            "client.loss=binary_logistic, or a gradient-matching attack (attack=ig) for other losses"
        )
    return meta.batch_size if meta.loss.reduction == "mean" else 1


def _check_update(meta: UpdateMetadata) -> int:
    """Refuse what R-GAP cannot invert; returns the loss's scale."""
    check_batch_size(meta)
    if meta.kind != "gradient":
        raise UnsupportedModelError(f"R-GAP inverts gradients (FedSGD); got an update of kind {meta.kind!r}")
    scale = loss_scale(meta)
    if meta.batch_size != 1:
        raise UnsupportedModelError(
            f"R-GAP recovers one sample; this update averages {meta.batch_size}. Use data.batch_size=1, or a "
            "gradient-matching attack for batches"
        )
    return scale


class RGAP:
    """The attack plugin (`attack=rgap`)."""

    update_kinds = ("gradient",)

    def __init__(self, options: RGAPOptions | None = None, /, **overrides: Any) -> None:
        self.options = build_options(RGAPOptions, options, overrides)
        self.name = self.options.name
        self.dtype = torch.float64 if self.options.dtype == "float64" else torch.float32

    def __call__(self, model: nn.Module, update: ClientUpdate) -> Reconstruction:
        with conv_tf32(False):  # every solve goes through convolutions: float32 must stay IEEE float32 on a GPU
            try:
                return self._attack(model, update)
            except torch.linalg.LinAlgError as exc:  # e.g. a gradient so small that its normal matrix underflows
                raise InvalidUpdateError(
                    f"R-GAP's linear algebra failed on this update ({exc}); its gradients are too far outside the "
                    f"range of {self.options.dtype} to solve: check the client's loss and any defence's scale"
                ) from exc

    def _attack(self, model: nn.Module, update: ClientUpdate) -> Reconstruction:
        meta = update.metadata
        scale = _check_update(meta)
        layers = read_layers(model, update, self.dtype)
        grad_out = layers[-1].grad.reshape(-1)
        w_out = layers[-1].op.weight.detach().reshape(-1).to(grad_out.device, torch.float64)
        c = float(w_out @ grad_out.double()) * scale
        clamped = math.isfinite(c) and c < F_MIN
        if clamped:
            # Noise (a defence) can push the scalar below anything a clean logistic gradient produces; the closest
            # consistent value is f's minimum. Attack on, and say so, rather than refuse the update.
            log.warning("<w, dL/dw> = %.4g is below the logistic minimum %.4f: using u = %.4f", c, F_MIN, U_STAR)
        roots = [U_STAR] if clamped else invert_logistic_scalar(c)
        shared = shared_labels(meta, classes=2)
        labels = [int(shared[0])] if shared is not None else [0, 1]
        candidates = [recurse(layers, label, u, scale, self.options, self.dtype) for label in labels for u in roots]
        best = choose_candidate(candidates)
        status, reason = run_status(best.layers, clamped)
        best = dataclasses.replace(best, status=status, status_reason=reason)
        best.info["output_scalar"] = c
        best.info["output_scalar_clamped"] = clamped
        if len(candidates) > 1:
            best.info["candidates"] = [
                {key: r.info[key] for key in ("label", "u", "mean_residual_rel", "range_violation")} for r in candidates
            ]
        return best
