"""The entry point as a user runs it: files in the run directory, clear failures; in-process and as a subprocess."""

import json
import sys

import pytest
from hydra.utils import instantiate

from rgap_bench.__main__ import main
from rgap_bench.rank import analyse_model


def test_entry_point_in_process_writes_metrics_with_the_counted_ranks(tmp_path, monkeypatch, compose_config):
    """`python -m rgap_bench`'s main() in this process (the subprocess runs below are marked slow)."""
    run_dir = tmp_path / "run"
    argv = ["rgap_bench", "model=convnet", "data.image_size=8", "logger=none", "save_images=false", "model.init=normal"]
    argv += [f"hydra.run.dir={run_dir}", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["psnr"] >= 60
    assert (metrics["run"]["model"], metrics["run"]["image_size"]) == ("convnet", 8)
    assert (metrics["run"]["model_init"], metrics["run"]["model_init_std"]) == ("normal", 0.01)
    layers = json.loads((run_dir / "layers.json").read_text())["layers"]
    model = instantiate(compose_config("model=convnet", "data.image_size=8", "model.init=normal").model)
    counted = analyse_model(model, numeric=False).layers
    assert [layer["rank_deficiency"] for layer in layers] == [row.predicted_deficiency for row in counted]


@pytest.mark.slow
def test_run_writes_metrics_layers_picture_and_offline_wandb(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    proc = run_cli("model=convnet", "data.image_size=16", f"hydra.run.dir={run_dir}", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert metrics["psnr"] >= 60 and metrics["mse"] < 1e-6
    assert metrics["run"]["model"] == "convnet" and metrics["run"]["image_size"] == 16
    assert metrics["versions"]["torch"].startswith("2.14")
    layers = json.loads((run_dir / "layers.json").read_text())["layers"]
    assert [layer["rank_deficiency"] for layer in layers] == [0, 0, 0]
    assert (run_dir / "reconstruction.png").stat().st_size > 1000
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert "PSNR" in proc.stdout


@pytest.mark.slow
def test_missing_dataset_fails_with_one_clear_message(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "data=cifar10",
        f"data.root={tmp_path / 'nowhere'}",
        "logger=none",
        f"hydra.run.dir={run_dir}",
        tmp_path=tmp_path,
    )
    assert proc.returncode == 1
    assert "cifar-10-batches-py" in proc.stderr and "never downloads" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.slow
@pytest.mark.parametrize("unknown", ["attack.sovler=dense"])
def test_unknown_key_is_refused_before_any_work(tmp_path, unknown, run_cli):
    proc = run_cli(unknown, "logger=none", f"hydra.run.dir={tmp_path / 'run'}", tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "sovler" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_one_failing_job_does_not_end_the_sweep(tmp_path, run_cli):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m", "data=cifar10,photos", "model=convnet", "data.image_size=16", "logger=none",
        f"hydra.sweep.dir={sweep}", tmp_path=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/metrics.json"))
    assert statuses == ["failed", "ok"]
