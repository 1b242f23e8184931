"""The result of one run as one record: the `metrics.json` layout and the W&B summary keys live only here.

Tests, benchmarks, notebooks and the README read `metrics.json` by key, and dashboards read the W&B summary by key,
so both layouts are written down once, next to each other, instead of being assembled by hand in the runner.

`status` is the job's (ok | failed | interrupted); `attack_status` grades the attack's result (exact | approximate |
failed | unsupported, `rgap_bench.types.Status`) and `attack_status_reason` says why, so a number that was not
measured (null: files hold no NaN/Inf) or not converged is never read as a success.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from rgap_bench.metrics import (
    METRICS_SPEC,
    combined_per_sample,
    label_accuracy,
    label_multiset_accuracy,
    reconstruction_metrics,
)
from rgap_bench.provenance import package_versions
from rgap_bench.types import Reconstruction, Status

FAILED_SUMMARY = {"status": "failed"}
INTERRUPTED_SUMMARY = {"status": "interrupted"}
SCORES = ("mse", "mse_unclamped", "psnr", "ssim", "exact_rate")


def noise_levels(client: dict[str, Any]) -> dict[str, float | None] | None:
    """The additive noise of the update (`metrics.json` `noise`): the absolute std per coordinate the noise
    defences used (independent draws add in quadrature) and its level relative to the update's RMS (at the first
    noise step: the update's scale before any noise); None without a noise defence."""
    steps = [s for s in client.get("defense_report", {}).get("steps", []) if s.get("sigma_abs") is not None]
    if not steps:
        return None
    sigma = math.sqrt(math.fsum(s["sigma_abs"] ** 2 for s in steps))
    first = steps[0]
    level = first.get("relative_level")
    relative = level * sigma / first["sigma_abs"] if level is not None and first["sigma_abs"] > 0 else level
    return {"sigma": sigma, "relative": relative}


def client_summary(client: dict[str, Any]) -> dict[str, float]:
    """W&B summary keys of the client side, from its record (`ClientRound.record()`, as in `client.json`)."""
    out: dict[str, float] = {}
    pretrain = client.get("pretrain", {})
    if "train_acc_eval" in pretrain:  # only a run that pretrained (or loaded a pretrained model)
        out["pretrain/train_acc"] = pretrain["train_acc_eval"]
    defense = client["defense_report"]
    out["defense/distortion"] = defense["distortion"]
    sigmas = [step["sigma"] for step in defense.get("steps", []) if isinstance(step.get("sigma"), int | float)]
    if sigmas:  # the noise std of a noise defence (defense=gaussian): the x axis of a noise sweep
        out["defense/sigma"] = sigmas[-1]
    noise = noise_levels(client)
    if noise is not None:
        out["defense/noise_sigma"] = noise["sigma"]
        if noise["relative"] is not None:
            out["defense/noise_relative"] = noise["relative"]
    if "epsilon" in defense:
        out["privacy/epsilon"] = defense["epsilon"]
    if "utility" in client:
        out["utility/test_acc"] = client["utility"]["test_acc"]
        if "epsilon" in client["utility"]:
            out["utility/epsilon"] = client["utility"]["epsilon"]
    return out


def failed_record(error: str, client: dict[str, Any], attack_status: Status = "failed") -> dict[str, Any]:
    """`metrics.json` of a run that failed: why, and whatever the client side had recorded before.

    `attack_status` is `unsupported` when the attack refused the model or update (UnsupportedModelError)."""
    return {
        "status": "failed",
        "error": error,
        "attack_status": attack_status,
        "attack_status_reason": error,
        **client,
        "versions": package_versions(),
    }


def interrupted_record(client: dict[str, Any]) -> dict[str, Any]:
    """`metrics.json` of a run stopped by Ctrl-C, with whatever the client side had recorded (none: it stopped
    before the attack)."""
    reason = "interrupted (Ctrl-C) before the run finished: no result"
    record = {"status": "interrupted", "error": reason, "attack_status": "failed", "attack_status_reason": reason}
    return {**record, **client, "versions": package_versions()}


def _grade(reconstruction: Reconstruction, scores: dict[str, Any]) -> tuple[Status, str]:
    """The attack's own status, failed when a score could not be measured (written as null)."""
    missing = [key for key in SCORES if not math.isfinite(scores[key])]
    if not missing:
        return reconstruction.status, reconstruction.status_reason
    reason = f"{', '.join(missing)} not finite (written as null): the reconstruction holds NaN or Inf"
    return "failed", "; ".join(r for r in (reason, reconstruction.status_reason) if r)


def _matched_clients(
    sample_clients: list[int] | None, assignment: list[int] | None, combined: dict[str, Any] | None
) -> list[int] | None:
    """Which client each reconstruction matched (an aggregate of several clients' updates); None otherwise."""
    if sample_clients is None:
        return None
    originals = [combined["matched_original"]] if combined is not None else assignment or [0]
    return [sample_clients[j] for j in originals]


@dataclass(frozen=True)
class RunMetrics:
    """Scores of a reconstruction against the private batch, with everything `metrics.json` reports beside them."""

    mse: float
    mse_unclamped: float
    psnr: float
    ssim: float
    exact_rate: float
    attack_status: Status
    attack_status_reason: str
    label_acc: float | None  # None when the attack returns no labels (a combined image: its batch's, unordered)
    label_source: str  # shared | inferred
    attack_time_s: float
    rank_deficiency: int | None  # summed over the layers that report one; None when none does
    combined: bool
    combined_reason: str | None  # why the attack returned one image for the batch (None when it did not)
    combined_per_sample: dict[str, Any] | None  # a combined image against each original (metrics.py)
    per_image: list[dict[str, Any]]
    assignment: list[int] | None
    matched_clients: list[int] | None  # fl.aggregate: the client of the original each reconstruction matched
    indices: list[int]
    run: dict[str, Any]  # what was run (attack, model, data, defence, client, seed, dtype, device)
    attack_info: dict[str, Any]
    client: dict[str, Any]  # the client side's record (update metadata, pretrain, defence report, fl, utility)

    @classmethod
    def score(
        cls,
        reconstruction: Reconstruction,
        originals: Tensor,
        targets: Tensor,
        *,
        labels_shared: bool,
        attack_time_s: float,
        indices: list[int],
        run: dict[str, Any],
        client: dict[str, Any],
        sample_clients: list[int] | None = None,
    ) -> RunMetrics:
        """Score `reconstruction` against the private `originals` and the labels the client trained on."""
        scores = reconstruction_metrics(
            reconstruction.inputs.detach().cpu(), originals.cpu(), combined=reconstruction.combined
        )
        label_acc, per_sample, why = None, None, None
        if reconstruction.combined:
            per_sample = combined_per_sample(reconstruction.inputs, originals)
            why = reconstruction.info.get("batch", {}).get("combined_reason")
            if reconstruction.labels is not None and reconstruction.labels.numel() == targets.numel():
                label_acc = label_multiset_accuracy(reconstruction.labels, targets)
        elif reconstruction.labels is not None:
            label_acc = label_accuracy(reconstruction.labels.cpu(), targets.cpu(), scores["assignment"])
        deficiency = [r.rank_deficiency for r in reconstruction.layers if r.rank_deficiency is not None]
        status, reason = _grade(reconstruction, scores)
        return cls(
            mse=scores["mse"],
            mse_unclamped=scores["mse_unclamped"],
            psnr=scores["psnr"],
            ssim=scores["ssim"],
            exact_rate=scores["exact_rate"],
            attack_status=status,
            attack_status_reason=reason,
            label_acc=label_acc,
            label_source="shared" if labels_shared else "inferred",
            attack_time_s=attack_time_s,
            rank_deficiency=sum(deficiency) if deficiency else None,
            combined=reconstruction.combined,
            combined_reason=why,
            combined_per_sample=per_sample,
            per_image=scores["per_image"],
            assignment=scores["assignment"],
            matched_clients=_matched_clients(sample_clients, scores["assignment"], per_sample),
            indices=indices,
            run=run,
            attack_info=reconstruction.info,
            client=client,
        )

    def record(self) -> dict[str, Any]:
        """The contents of `metrics.json` (keys and their order are part of the interface)."""
        return {
            "status": "ok",
            "attack_status": self.attack_status,
            "attack_status_reason": self.attack_status_reason,
            "mse": self.mse,
            "mse_unclamped": self.mse_unclamped,
            "psnr": self.psnr,
            "ssim": self.ssim,
            "exact_rate": self.exact_rate,
            "label_acc": self.label_acc,
            "label_source": self.label_source,
            "attack_time_s": self.attack_time_s,
            "rank_deficiency": self.rank_deficiency,
            "combined": self.combined,
            "combined_reason": self.combined_reason,
            "combined_per_sample": self.combined_per_sample,
            "per_image": self.per_image,
            "assignment": self.assignment,
            "matched_clients": self.matched_clients,
            "indices": self.indices,
            "run": self.run,
            "attack_info": self.attack_info,
            "noise": noise_levels(self.client),
            **self.client,
            "spec": METRICS_SPEC,
            "versions": package_versions(),
        }

    def summary(self) -> dict[str, float]:
        """The W&B summary: flat, namespaced keys; optional values only when the run has them."""
        out: dict[str, float] = {
            "recon/mse": self.mse,
            "recon/psnr": self.psnr,
            "recon/ssim": self.ssim,
            "recon/exact_rate": self.exact_rate,
            "attack/time_s": self.attack_time_s,
            **client_summary(self.client),
        }
        if self.label_acc is not None:
            out["recon/label_acc"] = self.label_acc
        if self.rank_deficiency is not None:
            out["rank/deficiency"] = self.rank_deficiency
        return {key: value for key, value in out.items() if math.isfinite(value)}  # a NaN is no measurement
