"""The `attack=rgap` plugin: checks the update, inverts the output layer's scalar, runs the recursion for every
(label, root) hypothesis and keeps the most consistent one."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from rgap_bench.attacks.logistic_scalar import F_MIN, U_STAR, invert_logistic_scalar, logistic_weight
from rgap_bench.attacks.metadata import check_batch_size, shared_labels
from rgap_bench.attacks.rgap.batch import attack_batch
from rgap_bench.attacks.rgap.layers import RGAPLayer, describe_op, read_layers
from rgap_bench.attacks.rgap.lockstep import Job, recurse_many
from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.polish import polish, polish_reason
from rgap_bench.attacks.rgap.recursion import recurse
from rgap_bench.attacks.rgap.report import run_status
from rgap_bench.attacks.rgap.softmax_head import label_candidates, softmax_starts
from rgap_bench.attacks.rgap.start import HeadStart, Hypotheses
from rgap_bench.errors import InvalidUpdateError, UnsupportedModelError
from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.precision import conv_tf32
from rgap_bench.linalg.symbol import shared_weights
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
    """Everything R-GAP reads of the client's loss: it must be one whose output step is derived (binary logistic or
    softmax cross-entropy), and its reduction says by how much the shared gradient was divided (scaled back)."""
    if meta.loss.name not in ("binary_logistic", "cross_entropy"):
        raise UnsupportedModelError(
            f"R-GAP's output-layer step is derived for the binary logistic and cross-entropy losses; got "
            f"{meta.loss.name!r}. Use one of them, or a gradient-matching attack (attack=ig) for other losses"
        )
    return meta.batch_size if meta.loss.reduction == "mean" else 1


def _check_update(meta: UpdateMetadata) -> int:
    """Refuse what R-GAP cannot invert; returns the loss's scale."""
    check_batch_size(meta)
    if meta.kind != "gradient":
        raise UnsupportedModelError(f"R-GAP inverts gradients (FedSGD); got an update of kind {meta.kind!r}")
    return loss_scale(meta)


def _check_head(head: RGAPLayer, meta: UpdateMetadata) -> None:
    """The head must fit the loss: one logit without bias for the binary logistic loss (its scalar equation is
    derived bias-free), C >= 2 classes with an identity activation for cross-entropy."""
    outputs = head.op.weight.shape[0]
    if meta.loss.name == "binary_logistic" and (outputs != 1 or head.op.bias is not None):
        raise UnsupportedModelError(
            f"the binary logistic loss needs one logit from a bias-free output layer; the last layer is "
            f"{describe_op(head.op)}{' with a bias' if head.op.bias is not None else ''}. Give the model a final "
            "{kind: linear, out: 1, bias: false} layer, or use client.loss=cross_entropy with one output per class"
        )
    identity = isinstance(head.act, PiecewiseLinear) and head.act.slope == 1.0
    if meta.loss.name == "cross_entropy" and (outputs < 2 or not identity):
        raise UnsupportedModelError(
            f"cross-entropy needs a linear output layer with one logit per class (>= 2) and activation identity; "
            f"the last layer is {describe_op(head.op)} with activation {head.act}. Give the model a final "
            "{kind: linear, out: <classes>, activation: identity} layer"
        )


def _logistic_starts(head: RGAPLayer, meta: UpdateMetadata, scale: int, dtype: torch.dtype) -> tuple[list, float, bool]:
    """The binary logistic head: invert <w, dL/dw> = mu dL/dmu for u = y mu; one start per (label, root)."""
    grad_out = head.grad.reshape(-1)
    w_out = head.op.weight.detach().reshape(-1).to(grad_out.device, torch.float64)
    c = float(w_out @ grad_out.double()) * scale
    clamped = math.isfinite(c) and c < F_MIN
    if clamped:
        # Noise (a defence) can push the scalar below anything a clean logistic gradient produces; the closest
        # consistent value is f's minimum. Attack on, and say so, rather than refuse the update.
        log.warning("<w, dL/dw> = %.4g is below the logistic minimum %.4f: using u = %.4f", c, F_MIN, U_STAR)
    roots = [U_STAR] if clamped else invert_logistic_scalar(c)
    shared = shared_labels(meta, classes=2)
    labels = [int(shared[0])] if shared is not None else [0, 1]
    starts = []
    for label in labels:
        for u in roots:
            y = 2 * label - 1
            mu = u / y
            z = head.act.inverse(torch.tensor([mu], dtype=dtype, device=head.grad.device))
            k = (-y * logistic_weight(u) / scale) * head.act.derivative(z)
            starts.append(HeadStart(label, k, z, {"u": float(u), "mu": float(mu)}))
    return starts, c, clamped


def _softmax_starts(head: RGAPLayer, meta: UpdateMetadata, scale: int, dtype: torch.dtype) -> list[HeadStart]:
    """The cross-entropy head: the label from the gradient's signs (checked against a shared one), then x."""
    rows = head.bias_grad if head.bias_grad is not None else head.grad
    labels = label_candidates(rows)
    shared = shared_labels(meta, classes=head.op.weight.shape[0])
    if shared is not None:
        if labels and int(shared[0]) not in labels:
            raise InvalidUpdateError(
                f"the shared label {int(shared[0])} disagrees with the output layer's gradient, whose signs say "
                f"{labels}: the label was not the one the client trained on, or the gradient is not its own"
            )
        labels = [int(shared[0])]
    if not labels:  # noise (a defence) broke the sign pattern: the label's row is the largest when clean
        labels = [int(rows.reshape(rows.shape[0], -1).norm(dim=1).argmax())]
    weight = head.op.weight.detach().to(dtype)
    bias = head.op.bias.detach().to(dtype) if head.op.bias is not None else None
    return softmax_starts(weight, head.grad, head.bias_grad, bias, labels, scale)


class RGAP:
    """The attack plugin (`attack=rgap`)."""

    update_kinds = ("gradient",)

    def __init__(self, options: RGAPOptions | None = None, /, **overrides: Any) -> None:
        self.options = build_options(RGAPOptions, options, overrides)
        self.name = self.options.name
        self.dtype = torch.float64 if self.options.dtype == "float64" else torch.float32

    def __call__(self, model: nn.Module, update: ClientUpdate) -> Reconstruction:
        with self._solving("this update"):
            return self._attack(model, update)

    @contextlib.contextmanager
    def _solving(self, what: str) -> Iterator[None]:
        """IEEE float32 convolutions for every solve (on a GPU too), and a failed factorisation (e.g. a gradient so
        small that its normal matrix underflows) reported as the update's fault."""
        with conv_tf32(False):
            try:
                yield
            except torch.linalg.LinAlgError as exc:
                raise InvalidUpdateError(
                    f"R-GAP's linear algebra failed on {what} ({exc}); its gradients are too far outside the range "
                    f"of {self.options.dtype} to solve: check the client's loss and any defence's scale"
                ) from exc

    def attack_many(self, model: nn.Module, updates: list[ClientUpdate]) -> list[Reconstruction]:
        """Several independent updates on the same model (a sweep's images), as `[self(model, u) for u in
        updates]` returns them up to rounding: the one-sample ones walk down the layers together and each conv
        layer's plain solve is one batched PCG over them, on the model's device (`lockstep.py`). An update that
        needs more (a batch, noise, a rank-deficient layer) is attacked on its own."""
        # shared_weights: the weight rows' symbol bounds once per layer, not per sample
        with self._solving(f"one of {len(updates)} updates"), shared_weights():
            return self._attack_many(model, updates)

    def _attack_many(self, model: nn.Module, updates: list[ClientUpdate]) -> list[Reconstruction]:
        hypotheses = {}
        for i, update in enumerate(updates):
            meta = update.metadata
            if meta.batch_size == 1 and not (self.options.noise_sigma or meta.noise_sigma):
                hypotheses[i] = self._hypotheses(model, update)
        jobs = [Job(h.layers, start, h.options, i) for i, h in hypotheses.items() for start in h.starts]
        solved = recurse_many(jobs, self.dtype)
        out = []
        for i, update in enumerate(updates):
            candidates = [rec for job, rec in zip(jobs, solved, strict=True) if job.owner == i]
            alone = i not in hypotheses or any(rec is None for rec in candidates)
            out.append(self._attack(model, update) if alone else self._choose(model, update, hypotheses[i], candidates))
        return out

    def _attack(self, model: nn.Module, update: ClientUpdate, combined: bool = False) -> Reconstruction:
        """One sample's update, or (`combined`) a batch's sum presented as one: its gradients are rank B, not one,
        so the rank-one truncation of linear layers (`attack.rank_one`) is off for it."""
        meta = update.metadata
        if meta.batch_size > 1:  # each sample when the batch splits, else the paper's combination (batch.py)
            scale = _check_update(meta)
            layers = read_layers(model, update, self.dtype)
            _check_head(layers[-1], meta)
            return attack_batch(model, update, layers, functools.partial(self._attack, combined=True), scale)
        hyp = self._hypotheses(model, update, combined)
        candidates = [recurse(hyp.layers, start, hyp.options, self.dtype) for start in hyp.starts]
        return self._choose(model, update, hyp, candidates)

    def _hypotheses(self, model: nn.Module, update: ClientUpdate, combined: bool = False) -> Hypotheses:
        """A one-sample update checked and read, with the recursion's starts (one per (label, root)) and options."""
        meta = update.metadata
        scale = _check_update(meta)
        layers = read_layers(model, update, self.dtype)
        head = layers[-1]
        _check_head(head, meta)
        c, clamped = None, False
        if meta.loss.name == "binary_logistic":
            starts, c, clamped = _logistic_starts(head, meta, scale, self.dtype)
        else:
            starts = _softmax_starts(head, meta, scale, self.dtype)
        options = self.options
        if options.noise_sigma is None and meta.noise_sigma is not None:  # the defence announced its noise
            options = dataclasses.replace(options, noise_sigma=meta.noise_sigma)
        if combined:
            options = dataclasses.replace(options, rank_one=False)
        return Hypotheses(layers, starts, options, c, clamped)

    def _choose(self, model: nn.Module, update: ClientUpdate, hyp: Hypotheses,
                candidates: list[Reconstruction]) -> Reconstruction:  # fmt: skip
        """The best hypothesis's reconstruction, graded (and polished where attack.polish says so)."""
        best = choose_candidate(candidates)
        status, reason = run_status(best.layers, hyp.clamped)
        info = dict(best.info)
        if hyp.c is not None:
            info.update(output_scalar=hyp.c, output_scalar_clamped=hyp.clamped)
        if len(candidates) > 1:
            keys = ("label", "u", "g_label", "mean_residual_rel", "range_violation")
            info["candidates"] = [{key: r.info[key] for key in keys if key in r.info} for r in candidates]
        best = dataclasses.replace(best, status=status, status_reason=reason, info=info)
        options = hyp.options
        why = polish_reason(best.layers, options.noise_sigma, options.tol) if options.polish == "auto" else None
        return best if why is None else polish(model, update, best, options.polish_iterations, why)
