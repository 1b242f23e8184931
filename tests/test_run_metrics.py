"""RunMetrics owns the metrics.json layout and the W&B summary keys: pin both."""

from __future__ import annotations

import pytest
import torch

from rgap_bench.run_metrics import RunMetrics, client_summary, failed_record, noise_levels
from rgap_bench.types import LayerReport, Reconstruction

CLIENT = {
    "update": {"kind": "gradient", "batch_size": 2, "client_loss": 0.69},
    "pretrain": {"epochs": 1, "train_acc_eval": 0.8},
    "defense_report": {"name": "dpsgd", "distortion": 0.5, "steps": [], "epsilon": 2.0, "delta": 1e-5},
    "utility": {"test_acc": 0.7, "epsilon": 3.0},
}
RECORD_KEYS = [
    "status", "attack_status", "attack_status_reason", "mse", "mse_unclamped", "psnr", "ssim", "exact_rate",
    "label_acc", "label_source", "attack_time_s",
    "rank_deficiency", "combined", "combined_reason", "combined_per_sample",
    "per_image", "assignment", "matched_clients", "indices", "run", "attack_info",
    "noise", "update", "pretrain", "defense_report", "utility", "spec", "versions",
]  # fmt: skip


def _metrics(labels: torch.Tensor | None, layers: list[LayerReport]) -> RunMetrics:
    originals = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    exact = originals.flip(0)  # the reconstructions come back in the other order
    recon = Reconstruction(inputs=exact, labels=labels, layers=layers, info={"note": "x"})
    return RunMetrics.score(
        recon, originals, torch.tensor([0, 1]), labels_shared=False, attack_time_s=1.5, indices=[3, 7],
        run={"attack": "test"}, client=CLIENT,
    )  # fmt: skip


def test_record_has_the_metrics_json_layout_and_scores_after_matching():
    layer = LayerReport(0, "conv", 16, 16, 8, 8, 0, rank_deficiency=3)
    metrics = _metrics(torch.tensor([1, 0]), [layer, LayerReport(1, "linear", 4, 4, 4, 0, 0)])
    record = metrics.record()
    assert list(record) == RECORD_KEYS
    assert record["psnr"] == 100.0 and record["assignment"] == [1, 0] and record["label_acc"] == 1.0
    assert record["rank_deficiency"] == 3 and record["label_source"] == "inferred" and record["indices"] == [3, 7]


def test_summary_uses_the_wandb_key_names():
    summary = _metrics(torch.tensor([0, 0]), []).summary()
    assert summary == {
        "recon/mse": 0.0, "recon/psnr": 100.0, "recon/ssim": summary["recon/ssim"], "recon/exact_rate": 1.0,
        "attack/time_s": 1.5, "pretrain/train_acc": 0.8, "defense/distortion": 0.5, "privacy/epsilon": 2.0,
        "utility/test_acc": 0.7, "utility/epsilon": 3.0, "recon/label_acc": 0.5,
    }  # fmt: skip
    assert "rank/deficiency" not in summary  # no layer reported one


def test_optional_keys_stay_out_when_the_run_has_no_such_value():
    client = {"update": {}, "pretrain": {"epochs": 0}, "defense_report": {"name": "none", "distortion": 0.0}}
    assert client_summary(client) == {"defense/distortion": 0.0}
    assert "recon/label_acc" not in _metrics(None, []).summary()
    failed = failed_record("ConfigError: x", client)
    assert list(failed) == [
        "status", "error", "attack_status", "attack_status_reason", "update", "pretrain", "defense_report", "versions",
    ]  # fmt: skip


def test_noise_records_the_absolute_std_and_the_level_relative_to_the_update():
    steps = [
        {"name": "clipping", "max_norm": 1.0},
        {"name": "gaussian", "sigma": 1e-2, "relative": True, "sigma_abs": 3e-6, "relative_level": 1e-2},
        {"name": "laplace", "scale": 0.0, "relative": False, "sigma_abs": 4e-6, "relative_level": 1e-2},
    ]
    client = {**CLIENT, "defense_report": {"name": "x", "distortion": 0.1, "steps": steps}}
    noise = noise_levels(client)
    assert noise == {"sigma": pytest.approx(5e-6, rel=1e-12), "relative": pytest.approx(5e-6 / 3e-4, rel=1e-12)}
    image = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    metrics = RunMetrics.score(
        Reconstruction(inputs=image), image, torch.tensor([0]),
        labels_shared=False, attack_time_s=0.0, indices=[0], run={}, client=client,
    )  # fmt: skip
    assert metrics.record()["noise"] == noise
    summary = metrics.summary()
    assert summary["defense/noise_sigma"] == noise["sigma"] and summary["defense/noise_relative"] == noise["relative"]
    assert noise_levels(CLIENT) is None and _metrics(None, []).record()["noise"] is None
