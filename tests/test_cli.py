"""The entry point as a user runs it: a subprocess, files in the run directory, clear failures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "rgap_bench", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_run_writes_metrics_layers_picture_and_offline_wandb(tmp_path):
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


def test_missing_dataset_fails_with_one_clear_message(tmp_path):
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


@pytest.mark.parametrize("unknown", ["attack.sovler=dense"])
def test_unknown_key_is_refused_before_any_work(tmp_path, unknown):
    proc = run_cli(unknown, "logger=none", f"hydra.run.dir={tmp_path / 'run'}", tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "sovler" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_one_failing_job_does_not_end_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "-m", "data=cifar10,photos", "model=convnet", "data.image_size=16", "logger=none",
        f"hydra.sweep.dir={sweep}", tmp_path=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/metrics.json"))
    assert statuses == ["failed", "ok"]
