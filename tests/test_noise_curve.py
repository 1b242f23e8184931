"""benchmarks/noise_curve.py: where two mean curves cross, the CSV cache, the table and the rows' CLI overrides."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def nc():
    spec = importlib.util.spec_from_file_location("noise_curve", ROOT / "benchmarks" / "noise_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_crossing_is_log_linear_between_the_levels(nc) -> None:
    # a - b: +10 at 1e-3, -30 at 1e-2: a quarter of the decade from 1e-3
    assert nc.crossings([0.0, 1e-3, 1e-2], [100, 40, 10], [5, 30, 40]) == [pytest.approx(10**-2.75)]
    # the same differences on a decade twice as wide: a quarter of the way in log
    assert nc.crossings([1e-5, 1e-3], [40, 10], [30, 40]) == [pytest.approx(10**-4.5)]


def test_crossings_none_several_and_through_zero(nc) -> None:
    levels = [1e-5, 1e-4, 1e-3, 1e-2]
    assert nc.crossings(levels, [50, 40, 30, 20], [10, 10, 10, 10]) == []  # a above everywhere: never in range
    assert nc.crossings(levels, [50, 5, 50, 5], [10, 10, 10, 10]) == pytest.approx(
        [10 ** (-5 + 40 / 45), 10 ** (-4 + 5 / 45), 10 ** (-3 + 40 / 45)]
    )
    assert nc.crossings(levels, [20, 10, 5, 5], [10, 10, 10, 10]) == [1e-4]  # equal at 1e-4, sign flips around it
    assert nc.crossings(levels, [20, 10, 20, 20], [10, 10, 10, 10]) == []  # touches and turns back: no crossing
    # level 0 is left out: a sign change between 0 and 1e-5 has no place on the log axis
    assert nc.crossings([0.0, 1e-5, 1e-4], [100, 5, 5], [10, 10, 10]) == []


def _rows(nc, psnr_by_attack: dict[str, list[float]], levels: list[float], images: int = 2) -> list[dict]:
    rows = []
    for attack, means in psnr_by_attack.items():
        for lv, m in zip(levels, means, strict=True):
            for image in range(images):
                spread = 1.0 if image else -1.0  # mean m, std 1
                row = {"model": "cnn6", "init": "normal", "attack": attack, "level": lv, "image": image}
                rows.append({**row, "psnr": m + spread, "mse": 0.1, "status": "ok", "time_s": 1.0, "commit": "x"})
    return rows


def test_table_has_mean_std_cells_and_the_crossings(nc) -> None:
    levels = [0.0, 1e-4, 1e-3, 1e-2]
    rows = _rows(nc, {"rgap": [100, 50, 30, 10], "dlg": [14, 14, 14, 14], "ig": [20, 20, 20, 20]}, levels)
    text = nc.table(rows)
    assert (
        "| cnn6 | normal | R-GAP (default, noise-aware) | 100.0 ± 1.0 | 50.0 ± 1.0 | 30.0 ± 1.0 | 10.0 ± 1.0 |" in text
    )
    cross = {line.split(" | ")[2]: line.split(" | ")[3] for line in text.splitlines() if " vs " in line}
    # rgap - dlg: +16 at 1e-3, -4 at 1e-2 -> 0.8 of the decade; dlg and ig never meet; rgap_plain not run
    assert float(cross["R-GAP (default, noise-aware) vs DLG"]) == pytest.approx(10**-2.2, rel=0.01)
    assert cross["DLG vs IG"] == "never in range (1e-4 to 1e-2)"
    assert not any(nc.NAMES["rgap_plain"] in c for c in cross)


def test_levels_in_paper_notation_and_partial_cells_show_n(nc) -> None:
    assert [nc.fmt_level(x) for x in (0.0, 1e-5, 0.0025, 0.1)] == ["0", "1e-5", "2.5e-3", "1e-1"]
    rows = _rows(nc, {"rgap": [50, 30], "ig": [20, 20]}, [1e-4, 1e-3])
    rows = [r for r in rows if not (r["attack"] == "ig" and (r["level"] == 1e-4 or r["image"] == 1))]
    text = nc.table(rows)
    assert "| cnn6 | normal | IG |  | 19.0 ± 0.0 (n=1) |" in text
    assert "n/a (one common level > 0: 1e-3)" in text  # no crossing can be told from one level


def test_a_failed_run_is_left_out_of_the_mean_and_listed(nc) -> None:
    rows = _rows(nc, {"rgap": [50, 30]}, [1e-4, 1e-3])
    rows[0].update(psnr=math.nan, status="failed: ValueError: boom")
    text = nc.table(rows)
    assert "51.0 ± 0.0" in text  # only image 1 left at 1e-4
    assert "1 run(s) failed" in text and "boom" in text


def test_csv_round_trip_keeps_the_keys(nc, tmp_path: Path) -> None:
    rows = _rows(nc, {"rgap": [50, 30], "dlg": [14, 14]}, [0.0, 1e-3])
    path = tmp_path / "noise_curve.csv"
    nc.write_rows(rows, path)
    back = nc.read_rows(path)
    assert sorted(map(nc.key, back)) == sorted(map(nc.key, rows))
    assert {nc.key(r): r["psnr"] for r in back} == {nc.key(r): r["psnr"] for r in rows}


def test_overrides_name_model_init_attack_and_relative_noise(nc) -> None:
    got = nc.overrides_for("fcn3", "normal", "ig", 1e-3, 4)
    assert {"model=fcn3", "model.init=normal", "attack=ig", "data.index=4", "defense.gaussian.relative=true"} <= set(
        got
    )
    assert "defense.gaussian.sigma=0.001" in got
    assert not any(o.startswith("defense") for o in nc.overrides_for("cnn6", "default", "rgap", 0.0, 0))
    assert not any("max_iterations" in o for o in nc.overrides_for("cnn6", "default", "ig", 0.0, 0))  # preset budget


def test_every_row_composes(nc, compose_config) -> None:
    for attack in nc.ATTACKS:
        cfg = compose_config(*nc.overrides_for("cnn6", "normal", attack, 1e-4, 1))
        assert cfg.model.init == "normal" and cfg.defense.gaussian.relative


def test_rows_already_in_the_csv_are_reused_and_recompute_replaces_only_the_grid(nc, tmp_path, monkeypatch) -> None:
    """The cache: a second run computes nothing; `--recompute --attacks rgap` recomputes only rgap's rows."""
    calls = []

    def fake_run(model, init, attack, level, image, commit=""):
        calls.append((model, init, attack, level, image))
        return {"model": model, "init": init, "attack": attack, "level": level, "image": image,
                "psnr": 10.0 + len(calls), "mse": 0.1, "status": "x", "time_s": 0.0, "commit": commit}  # fmt: skip

    monkeypatch.setattr(nc, "run_one", fake_run)
    monkeypatch.setattr(nc, "plot", lambda rows, path: None)
    base = ["noise_curve.py", "--models", "fcn3", "--inits", "normal", "--levels", "0", "1e-3", "--images", "1"]
    base += ["--out", str(tmp_path)]
    monkeypatch.setattr("sys.argv", [*base, "--attacks", "rgap", "dlg"])
    nc.main()
    assert len(calls) == 4
    first = {nc.key(r): r["psnr"] for r in nc.read_rows(tmp_path / "noise_curve.csv")}
    nc.main()
    assert len(calls) == 4  # all reused
    monkeypatch.setattr("sys.argv", [*base, "--attacks", "rgap", "--recompute"])
    nc.main()
    assert [c[2] for c in calls[4:]] == ["rgap", "rgap"]
    after = {nc.key(r): r["psnr"] for r in nc.read_rows(tmp_path / "noise_curve.csv")}
    assert after.keys() == first.keys()
    assert all((after[k] == first[k]) == (k[2] == "dlg") for k in first)
    assert "DLG" in (tmp_path / "noise_curve.md").read_text()


def test_show_prints_each_rows_cli_command_and_runs_nothing(nc, monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.setattr(nc, "run_one", lambda *a, **k: pytest.fail("--show must not run anything"))
    argv = ["noise_curve.py", "--show", "--models", "fcn3", "--attacks", "ig", "--levels", "0", "1e-2", "--images", "2"]
    monkeypatch.setattr("sys.argv", [*argv, "--out", str(tmp_path)])
    nc.main()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * 2 * 2  # inits x levels x images
    assert all(line.startswith("python -m rgap_bench logger=none") for line in lines)
    assert not (tmp_path / "noise_curve.csv").exists()
