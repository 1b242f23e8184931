"""R-GAP on a batch of B > 1 samples: split the batch where the gradient allows it, else the paper's combination.

A fully connected network with a softmax cross-entropy head and B distinct labels is split exactly
(`batch_solve`: the head by Newton's method on its gradient equations, every layer below in closed form), and each
sample is reconstructed. Everywhere else (a conv layer, the binary logistic loss's single logit, repeated labels,
more samples than the head's gradient can tell apart) the summed gradient is inverted as if it were one sample's,
as the paper's code does for a mini-batch; that reconstruction is marked `combined` and the reason is recorded.
docs/batches.md has the equations and exactly when the split is exact.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from rgap_bench.attacks.metadata import shared_labels
from rgap_bench.attacks.rgap.batch_solve import head_rank, solve_head, solve_layer
from rgap_bench.attacks.rgap.layers import RGAPLayer, describe_op
from rgap_bench.attacks.rgap.null_space import CONSISTENT_RESIDUAL as CONSISTENT
from rgap_bench.attacks.rgap.report import run_status
from rgap_bench.attacks.status import join, non_finite
from rgap_bench.types import ClientUpdate, LayerReport, Reconstruction, Status

log = logging.getLogger("rgap_bench.attacks.rgap")

# Newton's relative residual above which the head's equations count as unsolved and the batch is combined instead.
# Below it the split is kept even when noisy (graded approximate): measured on fcn3, a batch of 4 and Gaussian noise
# of the update's RMS leaves a head residual of 1.5e-2 and still 25 dB per sample, the combination 8 dB.
HEAD_GIVE_UP = 0.5

SingleAttack = Callable[[nn.Module, ClientUpdate], Reconstruction]


def batch_labels(head: RGAPLayer, batch_size: int) -> list[int] | None:
    """The batch's labels read off the head's bias gradient (cross-entropy): dL/db = sum_b (p_b - onehot(y_b)) / s
    is negative exactly at the labels when no class collects more than one unit of probability over the batch (an
    untrained net's near-uniform predictions; iDLG's sign rule summed over the batch). Most negative first; a label
    set smaller than the batch is padded by repeating its most negative classes (repeated labels cannot be counted
    from signs alone). None without a bias gradient."""
    if head.bias_grad is None:
        return None
    grad = head.bias_grad.reshape(-1)
    order = [int(c) for c in grad.argsort()]
    negative = [c for c in order if float(grad[c]) < 0] or order[:1]
    return [negative[i % len(negative)] for i in range(batch_size)]


def obstacle(layers: list[RGAPLayer], loss: str, labels: list[int] | None, batch_size: int) -> str:
    """Why the batch cannot be split exactly ("" when it can)."""
    if loss != "cross_entropy":
        return (
            f"the {loss} loss has one output logit: its gradient mixes the {batch_size} samples in one rank-one "
            "head, so no split exists (client.loss=cross_entropy with model.outputs=<classes> splits FC nets)"
        )
    convs = [layer.index for layer in layers if layer.is_conv]
    if convs:
        return (
            f"layer {convs[0]} is a convolution: its gradient sums every sample over every position, so the "
            "per-sample split of fully connected layers does not apply"
        )
    classes = layers[-1].op.weight.shape[0]
    if batch_size > classes - 1:
        return (
            f"{batch_size} samples but {classes} classes: the head's errors sum to zero over classes, so at most "
            f"{classes - 1} samples can be split (use model.outputs >= {batch_size + 1})"
        )
    if labels is None:
        return "the labels are neither shared nor readable (the output layer has no bias): share them or add a bias"
    if len(set(labels)) < batch_size:
        return (
            f"labels repeat ({sorted(labels)}; read from the bias gradient, a class that collected more than one "
            "unit of probability over the batch looks the same): samples with one label are not told apart"
        )
    rank = head_rank(layers[-1])
    if rank < batch_size:
        return f"the output layer's gradient has rank {rank} < {batch_size}: it does not tell every sample apart"
    return ""


def _grade(residual: float, undetermined: str, x: Tensor) -> tuple[Status, str]:
    """A split layer is exact when it fits its equations (R-GAP's 1e-3) and nothing in it is left undetermined."""
    broken = non_finite(x)
    if broken or not np.isfinite(residual):
        return "failed", broken or "the residual is NaN or Inf: the split broke down"
    reasons = [undetermined]
    if residual >= CONSISTENT:
        reasons.append(f"residual too large: {residual:.1e} >= {CONSISTENT:.0e} (noisy or inconsistent update)")
    return ("approximate" if any(reasons) else "exact"), join(reasons)


def _report(layer: RGAPLayer, batch_size: int, solver: str, residual: float, deficiency: int, undetermined: str,
            x: Tensor, began: float, note: str, iterations: int | None = None) -> LayerReport:  # fmt: skip
    """The layers.json row of one split layer: its unknowns are the B samples' inputs."""
    unknowns = batch_size * layer.unknowns
    report = LayerReport(
        layer.index, describe_op(layer.op), unknowns=unknowns, unknowns_padded=unknowns,
        gradient_constraints=layer.grad.numel(), weight_constraints=batch_size * layer.op.weight.shape[0],
        padding_constraints=0, rank=unknowns - deficiency, rank_deficiency=deficiency, rank_method="batch split",
        residual_rel=residual, solver=solver, iterations=iterations, time_s=time.perf_counter() - began, note=note,
    )  # fmt: skip
    report.status, report.status_reason = _grade(residual, undetermined, x)
    return report


def split_batch(layers: list[RGAPLayer], labels: list[int], scale: int, dtype: torch.dtype) -> Reconstruction:
    """Every sample of the batch, top-down: the head by Newton's method, each layer below in closed form."""
    b = len(labels)
    began = time.perf_counter()
    head = solve_head(layers[-1], labels, scale, dtype)
    free = b * b - head.jacobian_rank  # directions of H the head's equations do not fix at the root
    undetermined = f"the head's root is not isolated ({free} free directions)" if free else ""
    note = f"Jacobian rank {head.jacobian_rank} of {b * b} at the root"
    reports = [_report(layers[-1], b, "batch head: Newton", head.residual_rel, free, undetermined, head.x, began,
                       note, head.steps)]  # fmt: skip
    x, k = head.x, head.k
    for layer in reversed(layers[:-1]):
        began = time.perf_counter()
        z = layer.act.inverse(x)
        k = (k @ layers[layer.index + 1].op.weight.detach().to(dtype)) * layer.act.derivative(z)
        split = solve_layer(layer, k, z, dtype)
        undetermined = f"{split.deficiency} input directions undetermined" if split.deficiency else ""
        note = f"rank(K) = {split.rank} of {b}; weight rows fit to {split.weight_residual_rel:.1e}"
        residual = max(split.residual_rel, split.weight_residual_rel)
        reports.append(_report(layer, b, "batch: (K^T)^+ dW", residual, split.deficiency, undetermined, split.x,
                               began, note))  # fmt: skip
        x = split.x
    reports.reverse()
    images = x.reshape(b, *layers[0].in_shape).float().cpu()
    residual = float(np.mean([r.residual_rel for r in reports]))
    violation = float((images - images.clamp(0, 1)).abs().mean())
    status, reason = run_status(reports, clamped=False)
    info = {"split": True, "labels": labels, "head_steps": head.steps, "head_residual": head.residual_rel}
    return Reconstruction(
        inputs=images, labels=torch.tensor(labels), layers=reports, residual_rel=residual,
        range_violation=violation, status=status, status_reason=reason, info={"batch": info},
    )  # fmt: skip


def combined_update(update: ClientUpdate, scale: int) -> ClientUpdate:
    """The summed gradient presented as one sample's (the paper's mini-batch code): a mean is multiplied back by
    the batch size, and the labels, one per sample, are no longer shared (no single one belongs to the sum)."""
    meta = dataclasses.replace(update.metadata, batch_size=1, labels=None)
    tensors = {name: grad * scale for name, grad in update.tensors.items()}
    return ClientUpdate(tensors, meta)


def attack_batch(model: nn.Module, update: ClientUpdate, layers: list[RGAPLayer], single: SingleAttack,
                 scale: int) -> Reconstruction:  # fmt: skip
    """R-GAP on an update of B > 1 samples (its `layers` read in the solve dtype): each sample when the batch
    splits, else the combined reconstruction by `single`, the one-sample attack."""
    meta = update.metadata
    head = layers[-1]
    dtype = head.grad.dtype
    is_softmax = meta.loss.name == "cross_entropy"
    inferred = batch_labels(head, meta.batch_size) if is_softmax else None
    classes = head.op.weight.shape[0] if is_softmax else 2
    shared = shared_labels(meta, classes)
    labels = [int(t) for t in shared] if shared is not None else inferred
    reason = obstacle(layers, meta.loss.name, labels, meta.batch_size)
    label_info = {"labels_inferred": inferred, "labels_shared": None if shared is None else labels}
    if not reason:
        result = split_batch(layers, labels, scale, dtype)
        residual = result.info["batch"]["head_residual"]
        solved = residual < HEAD_GIVE_UP and not non_finite(result.inputs)
        if solved:
            info = {**result.info, "batch": {**result.info["batch"], **label_info}}
            log.info("batch of %d split per sample (labels %s)", meta.batch_size, labels)
            return dataclasses.replace(result, info=info)
        reason = f"the head's equations were not solved (residual {residual:.1e} >= {HEAD_GIVE_UP})"
    log.warning("batch of %d not split: %s; reconstructing their combination", meta.batch_size, reason)
    one = single(model, combined_update(update, scale))
    batch_info = {"split": False, "combined_reason": reason, **label_info}
    status_reason = join([f"combined reconstruction of {meta.batch_size} samples: {reason}", one.status_reason])
    return dataclasses.replace(
        one, combined=True, labels=None if labels is None else torch.tensor(labels),
        status="approximate" if one.status == "exact" else one.status, status_reason=status_reason,
        info={**one.info, "batch": batch_info},
    )  # fmt: skip
