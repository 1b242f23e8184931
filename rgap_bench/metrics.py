"""Reconstruction metrics under one pinned specification, written out in docs/metrics.md.

Published gradient-inversion tools disagree on peak value, averaging, matching and SSIM variant, so every
number here follows ``METRICS_SPEC``, which is written into each ``metrics.json`` so a result can be read
without the code.

Small images: the Gaussian SSIM window (11 px, sigma 1.5) does not fit an image smaller than 11 px
(torchmetrics reflect-pads by 5 px, which fails below 6 px and is dominated by mirrored border above).
For those the window shrinks to the largest odd size ``w <= min(H, W)`` and sigma to ``(w - 1) / 7``
(torchmetrics derives the Gaussian window from sigma as ``2 * int(3.5 * sigma + 0.5) + 1``, so this sigma
gives exactly ``w``). The window and sigma actually used are returned as ``ssim_window`` and ``ssim_sigma``;
images under 3 px are rejected.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

PSNR_CAP_DB = 100.0
EXACT_PSNR_DB = 40.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5

METRICS_SPEC: dict[str, Any] = {  # the machine-readable summary of docs/metrics.md, copied into metrics.json
    "document": "docs/metrics.md",
    "value_range": "images mapped back to [0, 1]; reconstruction clamped to [0, 1] for mse/psnr/ssim",
    "mse": "mean over pixels of (x_hat - x)^2 per image, then mean over the batch",
    "mse_unclamped": "as mse, without clamping the reconstruction",
    "psnr": {
        "definition": "10 log10(peak^2 / mse_i) per image, then mean over the batch",
        "peak": 1.0,
        "cap_db": PSNR_CAP_DB,
    },
    "ssim": {
        "implementation": "torchmetrics.functional.structural_similarity_index_measure",
        "kernel": "gaussian",
        "window": SSIM_WINDOW,
        "sigma": SSIM_SIGMA,
        "data_range": 1.0,
        "border": "reflect padding; the SSIM map is averaged over all C x H x W positions (torchmetrics 1.9)",
        "averaging": "per image, then mean over the batch",
        "small_images": "window shrinks to the largest odd w <= min(H, W), sigma to (w - 1) / 7; recorded",
    },
    "exact_threshold_psnr_db": EXACT_PSNR_DB,
    "matching": "one-to-one Hungarian assignment minimising total clamped MSE (scipy linear_sum_assignment)",
    "combined": "one reconstruction standing for a batch is scored against the originals' batch mean",
    "combined_per_sample": "a combined reconstruction also against each original; matched: the Hungarian pick",
    "label_acc": "share of labels recovered correctly, after the image assignment",
    "label_acc_combined": "a combined reconstruction's batch labels as a multiset: sum_c min(count) / B",
}


def _per_image_mse(a: Tensor, b: Tensor) -> Tensor:
    return (a - b).pow(2).flatten(1).mean(dim=1)


def _psnr(mse: Tensor) -> Tensor:
    """PSNR with peak 1, capped so exact recovery gives a finite, comparable number."""
    psnr = -10.0 * torch.log10(mse.clamp_min(10.0 ** (-PSNR_CAP_DB / 10.0)))
    return psnr.clamp(max=PSNR_CAP_DB)


def _ssim_window(height: int, width: int) -> tuple[int, float]:
    side = min(height, width)
    if side >= SSIM_WINDOW:
        return SSIM_WINDOW, SSIM_SIGMA
    window = side if side % 2 == 1 else side - 1
    if window < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {height}x{width}")
    return window, (window - 1) / 7.0


def _match(recon: Tensor, originals: Tensor) -> list[int]:
    """Assign each reconstruction to a distinct original so that the total MSE is minimal."""
    cost = (recon[:, None] - originals[None]).pow(2).flatten(2).mean(dim=2)
    cost = cost.nan_to_num(nan=2.0)  # a NaN reconstruction (scored null) matches worse than any image in [0, 1]
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    assignment = [0] * recon.shape[0]
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        assignment[r] = c
    return assignment


def reconstruction_metrics(reconstruction: Tensor, originals: Tensor, *, combined: bool = False) -> dict:
    """Score reconstructions (B', C, H, W) against private originals (B, C, H, W), both in [0, 1] image space.

    With ``combined`` the single reconstruction is scored against the batch mean of the originals. Otherwise
    reconstructions are matched one-to-one to originals (needs B' <= B) and ``assignment[j]`` is the original
    that reconstruction ``j`` was scored against. Computed in float64 so exact values stay exact.
    """
    if reconstruction.dim() != 4 or originals.dim() != 4:
        raise ValueError("expected (B, C, H, W) tensors")
    if reconstruction.shape[1:] != originals.shape[1:]:
        raise ValueError(f"shape mismatch: {tuple(reconstruction.shape)} vs {tuple(originals.shape)}")
    recon = reconstruction.detach().to(device="cpu", dtype=torch.float64)
    orig = originals.detach().to(device="cpu", dtype=torch.float64)
    clamped = recon.clamp(0.0, 1.0)

    assignment: list[int] | None
    if combined:
        if recon.shape[0] != 1:
            raise ValueError(f"a combined reconstruction holds one image, got {recon.shape[0]}")
        target = orig.mean(dim=0, keepdim=True)
        assignment = None
    else:
        if recon.shape[0] > orig.shape[0]:
            raise ValueError(f"{recon.shape[0]} reconstructions for {orig.shape[0]} originals")
        assignment = _match(clamped, orig) if orig.shape[0] > 1 else [0]
        target = orig[assignment]

    mse = _per_image_mse(clamped, target)
    mse_unclamped = _per_image_mse(recon, target)
    psnr = _psnr(mse)
    window, sigma = _ssim_window(*orig.shape[-2:])
    ssim = structural_similarity_index_measure(
        clamped,
        target,
        gaussian_kernel=True,
        sigma=sigma,
        kernel_size=window,
        data_range=1.0,
        reduction="none",
    ).reshape(-1)

    per_image = [
        {"psnr": p, "mse": m, "mse_unclamped": u, "ssim": s}
        for p, m, u, s in zip(psnr.tolist(), mse.tolist(), mse_unclamped.tolist(), ssim.tolist(), strict=True)
    ]
    for j, row in enumerate(per_image):
        row["original"] = "mean" if assignment is None else assignment[j]
    return {
        "mse": float(mse.mean()),
        "mse_unclamped": float(mse_unclamped.mean()),
        "psnr": float(psnr.mean()),
        "ssim": float(ssim.mean()),
        "exact_rate": float((psnr >= EXACT_PSNR_DB).double().mean()),
        "per_image": per_image,
        "assignment": assignment,
        "combined": combined,
        "ssim_window": window,
        "ssim_sigma": sigma,
    }


def combined_per_sample(reconstruction: Tensor, originals: Tensor) -> dict[str, Any]:
    """A combined reconstruction (1, C, H, W) against every original: what it says about each sample, and the one
    the Hungarian assignment (minimal clamped MSE, as for per-sample reconstructions) pairs it with."""
    recon = reconstruction.detach().to(device="cpu", dtype=torch.float64).clamp(0.0, 1.0)
    orig = originals.detach().to(device="cpu", dtype=torch.float64)
    psnr = _psnr(_per_image_mse(recon.expand_as(orig), orig))
    matched = _match(recon, orig)[0]
    return {"matched_original": matched, "matched_psnr": float(psnr[matched]), "psnr": psnr.tolist()}


def label_multiset_accuracy(predicted: Tensor, true: Tensor) -> float:
    """Labels of a batch recovered without an order (a combined reconstruction): the share of the true labels
    found, counting each class at most as often as it occurs in the batch."""
    true = true.reshape(-1).cpu()
    predicted = predicted.reshape(-1).cpu()
    if predicted.numel() != true.numel() or true.numel() == 0:
        raise ValueError(f"{predicted.numel()} predicted labels for {true.numel()} true labels")
    classes = int(max(int(true.max()), int(predicted.max()))) + 1
    hits = torch.minimum(torch.bincount(predicted, minlength=classes), torch.bincount(true, minlength=classes))
    return float(hits.sum()) / true.numel()


def label_accuracy(predicted: Tensor, true: Tensor, assignment: list[int] | None = None) -> float:
    """Share of recovered labels equal to the label of the original each reconstruction was matched to."""
    true = true.reshape(-1)
    if assignment is not None:
        true = true[torch.as_tensor(assignment, dtype=torch.long, device=true.device)]
    predicted = predicted.reshape(-1).to(true.device)
    if predicted.shape != true.shape:
        raise ValueError(f"{predicted.numel()} predicted labels for {true.numel()} true labels")
    if predicted.numel() == 0:
        return math.nan
    return float((predicted == true).double().mean())
