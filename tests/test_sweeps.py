"""Sweeps: isolated jobs, resume after a kill, run directories that never collide, launchers."""

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rgap_bench.__main__ import main
from rgap_bench.report import write_report
from rgap_bench.resume import completed_result, config_digest, start_job

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
TINY = ("model=convnet", "data.image_size=8", "logger=none", "save_images=false", "print_summary=false")
QUIET = ("hydra/job_logging=none", "hydra/hydra_logging=none")


def run_sweep(monkeypatch: pytest.MonkeyPatch, sweep: Path, *overrides: str) -> None:
    """`python -m rgap_bench -m ...` in this process (the basic launcher runs the jobs one after the other)."""
    argv = ["rgap_bench", "-m", *TINY, *overrides, f"hydra.sweep.dir={sweep}", *QUIET]
    monkeypatch.setattr(sys, "argv", argv)
    main()


def results(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))}


def without_times(node):
    """A result with its wall-clock timings and versions left out: what two runs of one job must agree on."""
    if isinstance(node, dict):
        return {k: without_times(v) for k, v in node.items() if "time" not in k and k != "versions"}
    if isinstance(node, list):
        return [without_times(v) for v in node]
    return node


def test_resume_reruns_the_killed_and_failed_jobs_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data=cifar10 looks for its (absent) folder under the working directory: it fails
    sweep = tmp_path / "sweep"
    grid = ("data=photos,cifar10", "seed=0,1")
    run_sweep(monkeypatch, sweep, *grid)
    uninterrupted = results(sweep)
    summary = write_report(sweep).jobs.drop(columns="attack_time_s")
    assert [r["status"] for r in uninterrupted.values()] == ["ok", "ok", "failed", "failed"]
    assert "never downloads" in uninterrupted["2_convnet_rgap"]["error"]

    (sweep / "0_convnet_rgap" / "metrics.json").unlink()  # killed while job 0 ran: no result, or a stale one
    kept = (sweep / "1_convnet_rgap" / "metrics.json").stat().st_mtime_ns
    failed = (sweep / "2_convnet_rgap" / "metrics.json").stat().st_mtime_ns
    run_sweep(monkeypatch, sweep, *grid, "resume=true")

    resumed = results(sweep)
    assert without_times(resumed) == without_times(uninterrupted)
    pd.testing.assert_frame_equal(write_report(sweep).jobs.drop(columns="attack_time_s"), summary)
    assert (sweep / "1_convnet_rgap" / "metrics.json").stat().st_mtime_ns == kept  # complete: skipped
    assert (sweep / "2_convnet_rgap" / "metrics.json").stat().st_mtime_ns != failed  # failed: tried again


def test_a_result_counts_as_complete_only_for_its_own_config(tmp_path):
    with initialize_config_module("rgap_bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=list(TINY))
        other = compose("config", overrides=[*TINY, "attack.rank=off"])
        resumed = compose("config", overrides=[*TINY, "resume=true", "logger=wandb"])
    start_job(tmp_path, cfg, [])
    assert completed_result(tmp_path, cfg) is None  # no metrics.json yet
    for status, attack_status, complete in [
        ("ok", "exact", True),
        ("failed", "unsupported", True),  # the attack refuses this model: a rerun would refuse it again
        ("failed", "failed", False),
        ("interrupted", "failed", False),
    ]:
        (tmp_path / "metrics.json").write_text(json.dumps({"status": status, "attack_status": attack_status}))
        assert (completed_result(tmp_path, cfg) is not None) == complete, (status, attack_status)
        assert (completed_result(tmp_path, resumed) is not None) == complete  # resume and logger change no result
        assert completed_result(tmp_path, other) is None  # another config's result is never kept
    (tmp_path / "metrics.json").write_text('{"status": "o')  # not JSON (atomic writes make this a foreign file)
    assert completed_result(tmp_path, cfg) is None
    assert config_digest(cfg) == config_digest(resumed) != config_digest(other)


def test_a_rerun_starts_without_the_previous_result(tmp_path):
    with initialize_config_module("rgap_bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=list(TINY))
    (tmp_path / "metrics.json").write_text('{"status": "ok"}')
    (tmp_path / "client.json").write_text("{}")
    start_job(tmp_path, cfg, ["seed=1"])
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "client.json").exists()
    assert json.loads((tmp_path / "job.json").read_text()) == {
        "config_digest": config_digest(cfg),
        "overrides": ["seed=1"],
    }


def test_two_sweeps_started_in_the_same_second_get_their_own_directories():
    with initialize_config_module("rgap_bench.conf", version_base="1.3"):
        first = compose("config", return_hydra_config=True)
        second = compose("config", return_hydra_config=True)
    assert first.hydra.sweep.dir == first.hydra.sweep.dir  # drawn once per config: every job agrees on it
    assert first.hydra.sweep.dir != second.hydra.sweep.dir
    assert first.hydra.run.dir != second.hydra.run.dir


@pytest.mark.slow
def test_joblib_runs_the_jobs_in_parallel_processes_with_one_thread_each(tmp_path):
    """`hydra/launcher=joblib` as a new user runs it: the launcher is installed and each job gets its own process."""
    import subprocess

    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"}
    env.pop("OMP_NUM_THREADS", None)  # the launcher, not the caller, must keep 2 jobs on 2 cores from oversubscribing
    args = [*TINY, "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(
        [sys.executable, "-m", "rgap_bench", "-m", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    jobs = results(sweep)
    assert [r["status"] for r in jobs.values()] == ["ok", "ok"]
    assert all(r["run"]["threads"] <= max(1, (os.cpu_count() or 1) // 2) for r in jobs.values())
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr


def sweep_axes(params: dict[str, str]) -> list[list[str]]:
    """The overrides along each axis of a `hydra.sweeper.params` grid (plain comma lists, as the presets use)."""
    return [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]


def axis_jobs(axes: list[list[str]]) -> list[list[str]]:
    """Jobs that take every value of every axis at least once (the others at their first value): composing the
    whole grid would cost minutes, and a value that fails to compose fails here too."""
    first = [axis[0] for axis in axes]
    jobs = [first]
    for i, axis in enumerate(axes):
        jobs += [[*first[:i], value, *first[i + 1 :]] for value in axis[1:]]
    return jobs


@pytest.mark.parametrize("preset", PRESETS)
def test_every_value_of_every_preset_composes_and_builds_its_model(preset):
    """Each value a preset sweeps composes against the schemas, and the model takes its data's input."""
    with initialize_config_module("rgap_bench.conf", version_base="1.3"):
        sweep = compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True)
        axes = sweep_axes(dict(sweep.hydra.sweeper.params))
        assert len(axes) > 1 and preset in sweep.logger.tags
        built = set()
        for job in axis_jobs(axes):
            cfg = compose("config", overrides=[f"experiment={preset}", *job])
            shape = (cfg.model.name, cfg.data.channels, cfg.data.image_size, str(cfg.model.get("layers")))
            if shape not in built:
                built.add(shape)
                model = instantiate(cfg.model)
                model(torch.zeros(1, cfg.data.channels, cfg.data.image_size, cfg.data.image_size))


FAST = sorted(p.stem for p in (ROOT / "conf" / "attack" / "fast").glob("*.yaml"))
BUDGET_KEYS = {"max_iterations", "restarts", "random_restarts", "matching.max_iterations"}


def flat(node, prefix: str = "") -> dict:
    """A nested config as dotted keys (`matching.max_iterations`)."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict | DictConfig):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_a_fast_attack_is_its_attack_with_a_small_budget_and_nothing_else():
    """`attack=fast/<name>` (what the debug preset sweeps) changes only the budget, so its job measures the same
    attack; a command-line value still wins over the small one."""
    assert FAST == ["dlg", "hgap", "idlg", "ig"]
    with initialize_config_module("rgap_bench.conf", version_base="1.3"):
        for name in FAST:
            full = flat(compose("config", overrides=[f"attack={name}"]).attack)
            fast = flat(compose("config", overrides=[f"attack=fast/{name}"]).attack)
            differs = {key for key in full if full[key] != fast[key]}
            assert fast.keys() == full.keys() and differs and differs <= BUDGET_KEYS, name
            assert all(fast[key] < full[key] for key in differs) and fast["name"] == name
            assert max(fast[key] for key in differs) <= 20
        given = compose("config", overrides=["attack=fast/dlg", "attack.max_iterations=7"])
    assert given.attack.max_iterations == 7


def test_debug_preset_gives_every_attack_a_small_budget_and_runs_without_wandb():
    with initialize_config_module("rgap_bench.conf", version_base="1.3"):
        sweep = compose("config", overrides=["experiment=debug"], return_hydra_config=True)
        attacks = str(sweep.hydra.sweeper.params.attack).split(",")
        for attack in attacks:
            cfg = compose("config", overrides=["experiment=debug", f"attack={attack}", "logger=none"])
            assert OmegaConf.select(cfg, "attack.max_iterations", default=0) <= 20, attack
    assert attacks == ["rgap", "fast/dlg"]


def test_noise_sweep_is_three_architectures_by_four_sigmas_by_two_attacks():
    with initialize_config_module("rgap_bench.conf", version_base="1.3"):
        sweep = compose("config", overrides=["experiment=noise_sweep"], return_hydra_config=True)
        arch, sigma, attack = sweep_axes(dict(sweep.hydra.sweeper.params))
        setups = [compose("config", overrides=["experiment=noise_sweep", a]) for a in arch]
    assert (len(arch), len(sigma), len(attack)) == (3, 4, 2)
    assert [(c.model.name, c.data.name, c.data.batch_size) for c in setups] == [
        ("cnn6", "photos", 1), ("cnn6d", "photos", 1), ("fcn3", "digits", 1)
    ]  # fmt: skip
    assert sigma[0] == "defense.gaussian.sigma=0" and {a.split("=")[1] for a in attack} == {"rgap", "dlg"}


def test_secure_design_pretrains_cnn6_variants_on_digits_for_rgap_and_ig():
    with initialize_config_module("rgap_bench.conf", version_base="1.3"):
        sweep = compose("config", overrides=["experiment=secure_design"], return_hydra_config=True)
    params = dict(sweep.hydra.sweeper.params)
    assert params == {"model.layers.1.out": "36,20,4", "attack": "rgap,ig", "data.index": "0,2500"}
    assert (sweep.data.name, sweep.data.channels, sweep.pretrain.epochs) == ("digits", 1, 2)
    assert OmegaConf.to_container(sweep.model.layers) == OmegaConf.to_container(
        compose_preset("rank_study").model.layers
    )  # the CNN6 family of rank_study: conv2 = 36 is CNN6, 20 is CNN6-d


def compose_preset(preset: str) -> DictConfig:
    with initialize_config_module("rgap_bench.conf", version_base="1.3"):
        return compose("config", overrides=[f"experiment={preset}"])


@pytest.mark.slow
def test_secure_design_runs_and_reports_accuracy_beside_psnr(tmp_path, monkeypatch):
    """The preset for real on 8x8 digits (pretraining 1 epoch, two widths, R-GAP): accuracy and its plot."""
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    argv = ["rgap_bench", "-m", "experiment=secure_design", "logger=none", "data.image_size=8", "pretrain.epochs=1",
            "model.layers.1.out=36,4", "attack=rgap", "data.index=0", f"hydra.sweep.dir={sweep}", *QUIET]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    main()
    report = write_report(sweep)
    assert list(report.jobs["status"]) == ["ok", "ok"] and report.jobs["accuracy"].between(0.5, 1).all()
    assert "accuracy_vs_psnr" in report.plots and list(report.table["model.layers.1.out"]) == [4, 36]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "overrides", "printed"),
    [
        ("table1.py", ["--n", "1", "+arch=fcn3", "attack=rgap,fast/dlg"], "| rgap | 100.00 | 1.000 |"),
        ("rank_vs_leakage.py", ["--images", "1", "data.image_size=8", "model.layers.1.out=36,4",
                                "model.layers.1.stride=2,1"], "Spearman(RA index, rgap PSNR)"),
    ],
)  # fmt: skip
def test_benchmark_scripts_run_their_preset_and_print_its_report(tmp_path, script, overrides, printed):
    """The README's `python benchmarks/table1.py` and `rank_vs_leakage.py`: a preset sweep, then the report."""
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    args = [*overrides, "logger=none", f"--sweep-dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert printed in proc.stdout and (tmp_path / "sweep" / "report.html").is_file()
    assert all(status == "ok" for status in pd.read_csv(tmp_path / "sweep" / "summary.csv")["status"])


def test_slurm_example_composes_onto_the_submitit_slurm_launcher():
    with initialize_config_module("rgap_bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.cpus_per_task) == ("cpu", 60, 2)


@pytest.mark.slow
def test_submitit_local_runs_a_two_job_sweep(tmp_path):
    """`hydra/launcher=submitit_local`: the SLURM launcher's code path (pickled jobs, one process each), locally."""
    import subprocess

    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    args = [*TINY, "seed=0,1", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]
    proc = subprocess.run(
        [sys.executable, "-m", "rgap_bench", "-m", *args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [(r["status"], r["run"]["seed"]) for r in results(sweep).values()] == [("ok", 0), ("ok", 1)]
    assert list((sweep / ".submitit").iterdir())  # submitit's own job folders: it really went through submitit
