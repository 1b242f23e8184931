"""Numerical failure is reported, not hidden: every layer and run is graded, and files never hold NaN or Inf."""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import numpy as np
import pytest
import torch

from rgap_bench.__main__ import main
from rgap_bench.attacks.dlg import DLG
from rgap_bench.attacks.rgap import RGAP
from rgap_bench.attacks.status import matching_status, worst
from rgap_bench.logging import write_json
from rgap_bench.models import build_convnet
from rgap_bench.run_metrics import RunMetrics
from rgap_bench.types import LayerReport, Reconstruction


def _convnet(image_size: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_convnet(
        [
            {"kind": "conv", "out": 16, "kernel": 4, "stride": 2, "padding": 1},
            {"kind": "conv", "out": 32, "kernel": 3, "stride": 2, "padding": 1},
            {"kind": "linear", "out": 1, "activation": "identity"},
        ],
        in_channels=3,
        image_size=image_size,
    )


def _refuse(constant: str) -> None:
    """json.loads accepts NaN and Infinity unless told otherwise; strict JSON has neither."""
    raise AssertionError(f"{constant} in a result file")


def test_a_clean_full_rank_solve_is_exact_layer_by_layer(make_update, photo_batch):
    model = _convnet()
    rec = RGAP(rank="exact")(model, make_update(model, photo_batch(image_size=8)))
    assert [layer.status for layer in rec.layers] == ["exact"] * 3
    assert (rec.status, rec.status_reason) == ("exact", "")
    assert json.loads(json.dumps(rec.layers[0].as_dict()))["status"] == "exact"  # a layers.json column


def test_an_unknown_rank_is_not_called_exact(make_update, photo_batch):
    model = _convnet()
    rec = RGAP(rank="off", solver="iterative")(model, make_update(model, photo_batch(image_size=8)))
    assert [layer.status for layer in rec.layers] == ["approximate", "approximate", "exact"]  # linear: rank known
    assert "rank not measured" in rec.layers[0].status_reason and rec.status == "approximate"


def test_unresolved_rank_deficiency_is_approximate_and_a_settled_joint_solve_resolves_it(
    make_update, photo_batch, deficient_over_surplus
):
    model = deficient_over_surplus(2)
    update = make_update(model, photo_batch(image_size=8, channels=1, index=2))
    plain = RGAP(rank="exact", carry_null_space=False)(model, update)
    assert plain.layers[1].status == "approximate" and "340 left unresolved" in plain.layers[1].status_reason
    assert plain.status == "approximate" and "layer 1: rank deficiency of 340" in plain.status_reason
    carried = RGAP(rank="exact")(model, update)
    assert carried.layers[0].pattern_settled is True
    assert [layer.status for layer in carried.layers] == ["exact"] * 3 and carried.status == "exact"


def test_a_joint_solve_whose_pattern_does_not_settle_says_so(make_update, photo_batch, deficient_over_surplus):
    model = deficient_over_surplus(1)  # seed 0's search lands on the right input: its forward pass settles it
    rec = RGAP(rank="exact")(model, make_update(model, photo_batch(image_size=8, channels=1, index=0)))
    assert rec.layers[0].pattern_settled is False
    assert "activation pattern not settled" in rec.layers[0].status_reason
    assert "left unresolved" in rec.layers[1].status_reason  # the deficiency above stays open
    assert rec.status == "approximate"


def test_pcg_stopped_by_its_iteration_cap_is_reported(make_update, photo_batch):
    model = _convnet()
    rec = RGAP(rank="off", solver="iterative", max_iter=2)(model, make_update(model, photo_batch(image_size=8)))
    assert rec.layers[0].normal_residual_rel > 1e-8
    assert "PCG not converged" in rec.layers[0].status_reason and "after 2 iterations" in rec.layers[0].status_reason
    assert rec.status == "approximate"


def test_a_clamped_output_scalar_makes_the_run_approximate(make_update, photo_batch):
    model = build_convnet(
        [{"kind": "conv", "out": 2, "kernel": 3, "padding": 1}, {"kind": "linear", "out": 1}],
        in_channels=1,
        image_size=4,
    )
    update = make_update(model, photo_batch(image_size=4, channels=1))
    head = model.blocks[-1].op.weight.detach()
    tensors = {**update.tensors, "blocks.1.op.weight": -head / head.norm() ** 2}  # <w, g> = -1: only noise does this
    rec = RGAP()(model, dataclasses.replace(update, tensors=tensors))
    assert rec.status == "approximate" and rec.status_reason.startswith("output scalar clamped")


def test_matching_is_exact_only_at_its_tolerance_and_failed_when_it_diverges():
    x = torch.zeros(1, 1, 2, 2)
    assert matching_status(1e-12, 1e-10, x)[0] == "exact"
    status, reason = matching_status(0.3, 1e-10, x, "after 5 evaluations (budget)")
    assert (
        status == "approximate"
        and reason == "gradient distance 3.00e-01 > attack.tolerance 1e-10 after 5 evaluations (budget)"
    )
    assert matching_status(math.inf, 1e-10, x) == (
        "failed",
        "the gradient distance is not finite: matching diverged (lower attack.lr)",
    )
    assert matching_status(0.0, 1e-10, torch.full((1, 1, 2, 2), math.nan)) == (
        "failed",
        "4 of 4 reconstructed values are NaN or Inf",
    )
    assert worst(["exact", "failed", "approximate"]) == "failed" and worst([]) == "exact"


def test_a_matching_attack_on_a_budget_is_approximate(make_update, photo_batch, single_thread):
    model = _convnet()
    rec = DLG(max_iterations=3, progress=False)(model, make_update(model, photo_batch(image_size=8)))
    assert rec.status == "approximate" and "after 3 evaluations (budget)" in rec.status_reason


def test_a_reconstruction_with_nan_is_failed_and_written_as_null(tmp_path):
    originals = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    recon = Reconstruction(inputs=torch.full_like(originals, math.nan), status="exact", status_reason="")
    metrics = RunMetrics.score(
        recon, originals, torch.tensor([0]), labels_shared=True, attack_time_s=0.1, indices=[0],
        run={}, client={"defense_report": {"distortion": 0.0}},
    )  # fmt: skip
    assert metrics.attack_status == "failed" and metrics.attack_status_reason.startswith("mse, mse_unclamped, psnr")
    assert "recon/psnr" not in metrics.summary()  # no NaN reaches W&B either
    write_json(tmp_path / "metrics.json", metrics.record())
    record = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=_refuse)
    assert record["psnr"] is None and record["per_image"][0]["psnr"] is None and record["attack_status"] == "failed"


def test_a_batch_with_one_nan_reconstruction_is_still_scored(tmp_path):
    originals = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    inputs = originals.flip(0).clone()
    inputs[0] = math.nan  # stands for originals[1]
    metrics = RunMetrics.score(
        Reconstruction(inputs=inputs, status="approximate", status_reason="budget"), originals, torch.tensor([0, 1]),
        labels_shared=True, attack_time_s=0.1, indices=[0, 1], run={}, client={"defense_report": {"distortion": 0.0}},
    )  # fmt: skip
    assert metrics.assignment == [1, 0] and metrics.per_image[1]["psnr"] == 100.0
    assert math.isnan(metrics.psnr) and metrics.attack_status == "failed"
    assert metrics.attack_status_reason.endswith("; budget")


def test_every_non_finite_number_becomes_null_whatever_holds_it(tmp_path):
    layer = LayerReport(0, "conv", 4, 4, 4, 4, 0, residual_rel=math.nan, sigma_min_rel=math.inf)
    obj = {
        "np": np.float32("nan"),
        "array": np.array([1.0, -np.inf]),
        "tensor": torch.tensor([math.nan, 2.0]),
        "layer": layer,
    }
    write_json(tmp_path / "x.json", obj)
    data = json.loads((tmp_path / "x.json").read_text(), parse_constant=_refuse)
    assert data["np"] is None and data["array"] == [1.0, None] and data["tensor"] == [None, 2.0]
    assert data["layer"]["residual_rel"] is None and data["layer"]["sigma_min_rel"] is None


def test_metrics_json_carries_the_attack_status_and_layers_json_the_layer_status(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    argv = ["rgap_bench", "model=convnet", "data.image_size=8", "logger=none", "save_images=false"]
    argv += ["print_summary=false", f"hydra.run.dir={run_dir}", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["attack_status"], metrics["attack_status_reason"]) == ("ok", "exact", "")
    layers = json.loads((run_dir / "layers.json").read_text())["layers"]
    assert [(layer["status"], layer["status_reason"]) for layer in layers] == [("exact", "")] * 3


def test_an_attack_that_refuses_the_update_is_recorded_as_unsupported(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    head = "model.layers=[{kind:conv,out:2,kernel:3,padding:1},{kind:linear,out:1,activation:relu}]"
    argv = ["rgap_bench", "model=convnet", "data.image_size=8", head, "logger=none"]
    argv += ["save_images=false", f"hydra.run.dir={run_dir}", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["attack_status"]) == ("failed", "unsupported")
    assert "ReLU on the output" in metrics["attack_status_reason"]
