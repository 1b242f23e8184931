"""`python -m rgap_bench.report`: tables, plots and report.html from a sweep directory; W&B grouping read back."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rgap_bench.__main__ import main as run_main
from rgap_bench.logging.wandb_offline import offline_runs
from rgap_bench.report import write_report
from rgap_bench.report.__main__ import main as report_main

QUIET = ("hydra/job_logging=none", "hydra/hydra_logging=none")


def fake_job(sweep: Path, num: int, attack: str, sigma: float, index: int, metrics: dict | None) -> None:
    """A job directory as a sweep leaves it: Hydra's config and overrides, and (unless killed) metrics.json."""
    job = sweep / f"{num}_cnn6_{attack}"
    (job / ".hydra").mkdir(parents=True)
    config = {
        "model": {"name": "cnn6"},
        "attack": {"name": attack},
        "data": {"name": "photos", "batch_size": 1, "index": index},
        "defense": {"gaussian": {"sigma": sigma}},
    }
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    overrides = [f"attack={attack}", f"defense.gaussian.sigma={sigma}", f"data.index={index}", "experiment=x"]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
        (job / "rank.json").write_text(json.dumps({"ra_index": 0.0}))


def ok(psnr: float, time_s: float) -> dict:
    return {"status": "ok", "attack_status": "exact", "psnr": psnr, "ssim": 0.5, "mse": 0.01, "attack_time_s": time_s}


@pytest.fixture
def synthetic_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "sweep"
    fake_job(sweep, 0, "rgap", 0.0, 0, ok(100.0, 0.5))
    fake_job(sweep, 1, "rgap", 0.0, 1, ok(90.0, 1.5))
    fake_job(sweep, 2, "rgap", 0.01, 0, ok(10.0, 0.5))
    fake_job(sweep, 3, "rgap", 0.01, 1, ok(20.0, 0.5))
    fake_job(sweep, 4, "dlg", 0.0, 0, ok(30.0, 8.0))
    reason = "UnsupportedModelError: dlg refuses this on purpose"
    fake_job(sweep, 5, "dlg", 0.0, 1, {"status": "failed", "attack_status": "unsupported", "error": reason})
    fake_job(sweep, 6, "dlg", 0.01, 0, None)  # killed before it wrote a result
    return sweep


def test_summary_has_one_row_per_job_with_the_swept_keys_first(synthetic_sweep):
    report = write_report(synthetic_sweep)
    summary = pd.read_csv(report.files["summary"])
    assert list(summary.columns[:3]) == ["attack", "defense.gaussian.sigma", "data.index"]  # "experiment" is no key
    assert list(summary["job"]) == [f"{i}_cnn6_{a}" for i, a in enumerate(["rgap"] * 4 + ["dlg"] * 3)]
    assert list(summary["status"]) == ["ok"] * 5 + ["failed", "missing"]
    assert list(summary["sigma"]) == [0.0, 0.0, 0.01, 0.01, 0.0, 0.0, 0.01]


def test_table_averages_over_images_and_lists_the_jobs_without_a_result(synthetic_sweep):
    report = write_report(synthetic_sweep)
    table = report.table.set_index(["attack", "defense.gaussian.sigma"])
    assert table.loc[("rgap", 0.0), "psnr"] == "95.00 ± 7.07"  # mean ± sample std over data.index 0 and 1
    assert table.loc[("rgap", 0.01), "psnr"] == "15.00 ± 7.07"
    assert table.loc[("dlg", 0.0), "psnr"] == "30.00" and table.loc[("dlg", 0.0), "n"] == 1
    assert ("dlg", 0.01) not in table.index  # nothing finished there
    assert list(report.failed["status"]) == ["failed", "missing"]
    assert (
        "refuses this on purpose" in report.failed["reason"][0] and report.failed["attack_status"][0] == "unsupported"
    )
    text = report.files["markdown"].read_text()
    assert "| rgap | 0.0 | 95.00 ± 7.07 |" in text and "Jobs without a result (2)" in text
    assert "did not finish" in text


def test_plots_follow_what_was_swept_and_the_html_is_self_contained(synthetic_sweep):
    report = write_report(synthetic_sweep)
    assert set(report.plots) == {"psnr_vs_sigma", "attack_time"}  # batch size, RA index, accuracy did not vary
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in report.plots.values())
    page = report.files["html"].read_text()
    assert page.count('src="data:image/png;base64,') == 2 and "plots/" not in page
    assert "refuses this on purpose" in page and "95.00 ± 7.07" in page


def test_cli_refuses_a_directory_without_jobs(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        report_main([str(tmp_path)])
    assert info.value.code == 2 and "holds no job directories" in capsys.readouterr().err


def test_debug_sweep_report_and_wandb_runs_grouped_by_sweep(tmp_path, monkeypatch, capsys):
    """The debug preset for real (R-GAP only, 2 jobs), tracked offline, then `report --wandb`; the offline files
    are read back: one group, the attack as job type, the preset as tag, namespaced summaries, the report run."""
    sweep = tmp_path / "2026-01-01_sweep"
    argv = ["rgap_bench", "-m", "experiment=debug", "attack=rgap", "save_images=true", f"hydra.sweep.dir={sweep}",
            *QUIET]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    run_main()
    assert report_main([str(sweep), "--wandb"]) == 0
    assert "2 jobs (2 with a result, 0 without)" in capsys.readouterr().out

    summary = pd.read_csv(sweep / "summary.csv")
    assert list(summary["defense.gaussian.sigma"]) == [0.0, 0.01] and list(summary["status"]) == ["ok", "ok"]
    assert summary["psnr"][0] > 60 > summary["psnr"][1]  # exact without noise, not with it
    assert (sweep / "plots" / "psnr_vs_sigma.png").is_file() and (sweep / "report.html").is_file()

    runs = {run.job_type: run for run in offline_runs(sweep)}
    jobs = [run for run in offline_runs(sweep) if run.job_type == "rgap"]
    assert len(jobs) == 2 and set(runs) == {"rgap", "report"}
    assert {run.group for run in offline_runs(sweep)} == {sweep.name}
    assert all("debug" in run.tags for run in offline_runs(sweep))
    by_sigma = {run.summary["defense/sigma"]: run.summary for run in jobs}
    assert set(by_sigma) == {0.0, 0.01}
    assert by_sigma[0.0]["recon/psnr"] == pytest.approx(summary["psnr"][0])
    assert {"attack/time_s", "rank/ra_index", "recon/ssim"} <= set(by_sigma[0.01])
    assert runs["report"].summary["report/jobs"] == 2 and runs["report"].summary["report/failed"] == 0
    config = jobs[0].config  # flattened: one dashboard column per dotted key, named as a sweep overrides it
    assert config["model.name"] == "convnet" and config["defense.gaussian.sigma"] in (0.0, 0.01)
    assert "model" not in config and config["logger.tags"] == ["debug"]
    assert by_sigma[0.0]["layers/_type"] == "table-file"  # the per-layer solve as a W&B table
    assert by_sigma[0.0]["reconstruction/_type"] == "image-file"  # the originals/reconstructions grid


def test_accuracy_sits_beside_psnr_and_says_what_it_was_measured_on(tmp_path):
    """secure_design's answer: the pretrained model's accuracy (metrics.json `pretrain`) next to the PSNR, plotted."""
    sweep = tmp_path / "sweep"
    for num, (width, acc, psnr) in enumerate([(36, 0.91, 100.0), (4, 0.89, 9.0)]):
        job = sweep / f"{num}_cnn6_variant_rgap"
        (job / ".hydra").mkdir(parents=True)
        config = {"model": {"name": "cnn6_variant"}, "attack": {"name": "rgap"}, "data": {"name": "digits"}}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model.layers.1.out={width}"]))
        (job / "metrics.json").write_text(json.dumps({**ok(psnr, 0.1), "pretrain": {"train_acc_eval": acc}}))
    report = write_report(sweep)
    assert list(report.jobs["accuracy"]) == [0.91, 0.89]
    assert set(report.jobs["accuracy_on"]) == {"training data, pretrained"}
    assert list(report.table["accuracy"]) == ["0.890", "0.910"] and "accuracy_vs_psnr" in report.plots


def test_a_sigma_written_without_a_dot_sorts_as_a_number(tmp_path):
    """YAML 1.1 reads `1e-05` as a string: the swept column must still be numeric and ordered by value."""
    sweep = tmp_path / "sweep"
    for num, sigma in enumerate(["0", "1e-05", "0.0001", "0.001"]):
        job = sweep / f"{num}_cnn6_rgap"
        (job / ".hydra").mkdir(parents=True)
        config = {
            "model": {"name": "cnn6"},
            "attack": {"name": "rgap"},
            "defense": {"gaussian": {"sigma": float(sigma)}},
        }
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"defense.gaussian.sigma={sigma}"]))
        (job / "metrics.json").write_text(json.dumps(ok(100.0 - 10 * num, 1.0)))
    report = write_report(sweep)
    table = pd.read_csv(report.files["summary"])
    assert table["defense.gaussian.sigma"].tolist() == [0.0, 1e-05, 0.0001, 0.001]
    rows = [line for line in Path(report.files["markdown"]).read_text().splitlines() if line.startswith("| ")]
    assert [float(r.split("|")[1]) for r in rows[1:5]] == [0.0, 1e-05, 0.0001, 0.001]  # rows[0]: the header
