"""Nothing is lost: result files are replaced atomically, and Ctrl-C leaves a run directory that says so."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from rgap_bench.__main__ import main
from rgap_bench.attacks.rgap import RGAP
from rgap_bench.logging import atomic_write, save_comparison, write_json


def test_an_interrupted_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"psnr": 1.0})
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as tmp:
        tmp.write_text('{"psnr": 2')  # half written when Ctrl-C arrives
        raise KeyboardInterrupt
    assert json.loads(path.read_text()) == {"psnr": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_result_files_are_renamed_into_place_from_the_same_directory(tmp_path, monkeypatch):
    renames = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((src, dst)), real(src, dst)))
    write_json(tmp_path / "layers.json", {"layers": []})
    save_comparison(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4), tmp_path / "reconstruction.png")
    assert [dst.name for _, dst in renames] == ["layers.json", "reconstruction.png"]
    assert all(src.parent == dst.parent == tmp_path for src, dst in renames)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layers.json", "reconstruction.png"]
    assert (tmp_path / "reconstruction.png").read_bytes()[:4] == b"\x89PNG"


def test_ctrl_c_during_the_attack_leaves_metrics_json_saying_interrupted(tmp_path, monkeypatch):
    def interrupted(self, model, update):
        raise KeyboardInterrupt

    monkeypatch.setattr(RGAP, "__call__", interrupted)
    run_dir = tmp_path / "run"
    argv = ["rgap_bench", "model=convnet", "data.image_size=8", "logger=none", "save_images=false"]
    argv += [f"hydra.run.dir={run_dir}", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 130  # the shell's code for SIGINT: scripts and sweeps see an interruption
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["attack_status"]) == ("interrupted", "failed")
    assert metrics["update"]["kind"] == "gradient"  # the client side, recorded before the attack, is kept
    assert not (run_dir / "layers.json").exists()
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == [".hydra"]  # no temporary left
