"""Same config and seed, same numbers: every attack run twice on CPU writes bit-identical metrics and layers."""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import torch

from rgap_bench.__main__ import main

# a conv whose input is rank-deficient (3x8x8 unknowns, far fewer equations) and no conv below to complete it: H-GAP
# goes on to its matching stage
DEFICIENT = "model.layers=[{kind:conv,out:2,kernel:3,stride:2,padding:1},{kind:linear,out:1,activation:identity}]"
ATTACKS = {
    "rgap": [],
    "dlg": ["attack.max_iterations=5"],
    "idlg": ["attack.max_iterations=5"],
    "ig": ["attack.max_iterations=5"],
    "hgap": ["attack.matching.max_iterations=5", DEFICIENT],
}


def _without_timings(obj: Any) -> Any:
    """Everything but wall-clock times, which no seed fixes."""
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if not k.endswith("time_s")}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _run(run_dir: Path, overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    argv = ["rgap_bench", "model=convnet", "data.image_size=8", "logger=none", "save_images=false"]
    argv += ["print_summary=false", *overrides, f"hydra.run.dir={run_dir}", "hydra/job_logging=none"]
    argv += ["hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    return {name: json.loads((run_dir / name).read_text()) for name in ("metrics.json", "layers.json", "rank.json")}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_same_config_and_seed_give_bit_identical_results(attack, tmp_path, monkeypatch):
    overrides = [f"attack={attack}", *ATTACKS[attack]]
    first = _run(tmp_path / "a", overrides, monkeypatch)
    second = _run(tmp_path / "b", overrides, monkeypatch)
    assert _without_timings(first) == _without_timings(second)  # floats compared with ==: bit for bit
    metrics = first["metrics.json"]
    assert metrics["status"] == "ok" and metrics["attack_status"] in ("exact", "approximate")
    run, versions = metrics["run"], metrics["versions"]
    assert (run["seed"], run["device"], run["threads"]) == (0, "cpu", torch.get_num_threads())
    assert versions["torch"] == version("torch") and versions["numpy"] == version("numpy")
    if attack == "hgap":
        assert metrics["attack_info"]["hgap"]["stage"] in ("matching", "rgap")  # matching ran
        assert metrics["attack_info"]["hgap"]["deficient_layers"] == [0]
