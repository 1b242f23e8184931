"""The paper's noise experiment, rerun: PSNR of R-GAP (plain and noise-aware), DLG and IG against the relative
level of Gaussian noise on the update (sigma = level x the update's RMS, `defense.gaussian.relative=true`), at the
PyTorch default weight initialisation and at the R-GAP paper's N(0, 0.01) (`model.init=normal`).

Every run is the CLI's own job (`rgap_bench.task.run_experiment`) on a config composed from Hydra overrides, so each
row is exactly `python -m rgap_bench <overrides>` (printed with --show) and nothing here copies the config:

    python benchmarks/noise_curve.py                                   # cnn6 + fcn3, both inits, 6 levels, 5 photos
    python benchmarks/noise_curve.py --attacks rgap rgap_plain --recompute  # redo only R-GAP's rows (new code)
    python benchmarks/noise_curve.py --images 2 --levels 0 1e-4 1e-3 --attacks rgap  # quick look; --out DIR: own cache

The CSV in --out (default benchmarks/results) is a cache keyed by (model, init, attack, level, image): a row already
there is reused (an interrupted run resumes), `--recompute` replaces the rows of this run's grid, and rows outside
the grid are kept either way; the table and plot are drawn from the whole CSV. Each row is written as it finishes.
Models on the embedded photos (3x32x32; fcn3 then has 3072 inputs), seed 0, `attack.rank=off` (no rank probe: the
curve times the solve only). Budgets: DLG 300 gradient evaluations (L-BFGS), IG its preset (2000 signed-Adam steps,
2 restarts; `attack=ig`).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import math
import subprocess
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module

from rgap_bench.config import register_schemas
from rgap_bench.logging.base import NullLogger
from rgap_bench.task import run_experiment

ATTACKS = {  # label -> Hydra overrides
    # the paper's plain recursion: every noise-aware step off (pattern refit, image prior, rank-one fit, polish)
    "rgap_plain": [
        "attack=rgap",
        "attack.rank=off",
        "attack.refit_pattern=false",
        "attack.image_prior=none",
        "attack.rank_one=false",
        "attack.polish=off",
    ],
    # noise-aware closed form (the default): refit, image prior, rank-one fit and chain refinement of linear layers
    "rgap": ["attack=rgap", "attack.rank=off"],
    "rgap_polish": ["attack=rgap", "attack.rank=off", "attack.polish=auto"],  # + gradient-matching polish
    "rgap_gcv": ["attack=rgap", "attack.rank=off", "attack.regularize=gcv"],
    "dlg": ["attack=dlg", "attack.max_iterations=300"],
    "ig": ["attack=ig"],  # the preset's budget: 2000 iterations x 2 restarts
}
NAMES = {"rgap_plain": "R-GAP plain (no refit, prior, rank-one fit, polish)", "rgap": "R-GAP (default, noise-aware)",
         "rgap_polish": "R-GAP + polish",
         "rgap_gcv": "R-GAP + GCV Tikhonov", "dlg": "DLG", "ig": "IG"}  # fmt: skip
PAIRS = [
    ("rgap", "dlg"),
    ("rgap", "ig"),
    ("dlg", "ig"),
    ("rgap_plain", "dlg"),
    ("rgap_polish", "dlg"),
]  # crossings reported
LEVELS = [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
KEY = ("model", "init", "attack", "level", "image")
FIELDS = [*KEY, "psnr", "mse", "status", "time_s", "commit"]


def overrides_for(model: str, init: str, attack: str, level: float, image: int) -> list[str]:
    """The CLI overrides of one row."""
    out = ["logger=none", "save_images=false", "print_summary=false", f"model={model}", f"model.init={init}"]
    out += ["data=photos", f"data.index={image}", *ATTACKS[attack]]
    if level > 0:
        out += ["defense=gaussian", f"defense.gaussian.sigma={level}", "defense.gaussian.relative=true"]
    return out


def run_one(model: str, init: str, attack: str, level: float, image: int, commit: str = "") -> dict:
    with initialize_config_module("rgap_bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides_for(model, init, attack, level, image))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        try:
            metrics = run_experiment(cfg, Path(run_dir), NullLogger())
        except Exception as exc:  # one failed job is a row (status failed), as in a CLI sweep
            metrics = {"psnr": math.nan, "mse": math.nan, "attack_status": f"failed: {type(exc).__name__}: {exc}"}
    return {"model": model, "init": init, "attack": attack, "level": level, "image": image, "psnr": metrics["psnr"],
            "mse": metrics["mse"], "status": metrics["attack_status"],
            "time_s": round(time.perf_counter() - start, 2), "commit": commit}  # fmt: skip


def key(row: dict) -> tuple:
    return (row["model"], row["init"], row["attack"], float(row["level"]), int(row["image"]))


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row.update(level=float(row["level"]), image=int(row["image"]), psnr=float(row["psnr"]), mse=float(row["mse"]))
    return rows


def write_rows(rows: list[dict], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(rows, key=key))
    tmp.replace(path)


def curves(rows: list[dict]) -> dict[tuple[str, str, str], dict[float, list[float]]]:
    """(model, init, attack) -> level -> the PSNRs of its images (failed runs, PSNR nan, left out: see `table`)."""
    out: dict[tuple[str, str, str], dict[float, list[float]]] = {}
    for r in rows:
        if math.isfinite(r["psnr"]):
            out.setdefault((r["model"], r["init"], r["attack"]), {}).setdefault(float(r["level"]), []).append(r["psnr"])
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def crossings(levels: list[float], a: list[float], b: list[float]) -> list[float]:
    """The levels where curve `a` and curve `b` cross: a sign change of a - b between two neighbouring levels,
    placed by linear interpolation of a - b in log(level). Level 0 has no place on a log axis and is left out; a
    difference of exactly 0 at a level, with opposite signs around it, is a crossing at that level."""
    points = [(lv, x - y) for lv, x, y in sorted(zip(levels, a, b, strict=True)) if lv > 0]
    nonzero = [(i, lv, d) for i, (lv, d) in enumerate(points) if d != 0]
    found = []
    for (i, lv0, d0), (j, lv1, d1) in itertools.pairwise(nonzero):
        if (d0 > 0) == (d1 > 0):
            continue
        if j > i + 1:  # touching zero at the levels in between
            found.append(points[i + 1][0])
        else:
            t = d0 / (d0 - d1)
            found.append(math.exp(math.log(lv0) + t * (math.log(lv1) - math.log(lv0))))
    return found


def crossing_lines(rows: list[dict]) -> list[str]:
    """One Markdown table row per (model, init) and pair of attacks present: where their mean curves cross."""
    data = curves(rows)
    lines = []
    for model, init in dict.fromkeys((m, i) for m, i, _ in data):
        for a, b in PAIRS:
            ca, cb = data.get((model, init, a)), data.get((model, init, b))
            if not ca or not cb:
                continue
            levels = sorted(set(ca) & set(cb))
            ma, mb = [mean_std(ca[lv])[0] for lv in levels], [mean_std(cb[lv])[0] for lv in levels]
            positive = [lv for lv in levels if lv > 0]
            if not positive:
                continue
            found = crossings(levels, ma, mb)
            above = a if ma[levels.index(positive[0])] > mb[levels.index(positive[0])] else b
            where = ", ".join(f"{x:.1e}" for x in found) if found else "never in range"
            if len(positive) < 2:
                where = f"n/a (one common level > 0: {fmt_level(positive[0])})"
            elif not found:
                where += f" ({fmt_level(positive[0])} to {fmt_level(positive[-1])})"
            lines.append(f"| {model} | {init} | {NAMES[a]} vs {NAMES[b]} | {where} | {NAMES[above]} |")
    return lines


def table(rows: list[dict]) -> str:
    """Mean +- std PSNR per (model, init, attack) and level, then the crossings, as Markdown."""
    data = curves(rows)
    levels = sorted({float(r["level"]) for r in rows})
    lines = ["| model | init | attack | " + " | ".join(map(fmt_level, levels)) + " |"]
    lines.append("|---" * (len(levels) + 3) + "|")
    most = max((len(v) for c in data.values() for v in c.values()), default=0)
    for (model, init, attack), per_level in sorted(data.items(), key=lambda kv: (kv[0][0], kv[0][1], _order(kv[0][2]))):
        cells = [_cell(per_level.get(lv, []), most) for lv in levels]
        lines.append(f"| {model} | {init} | {NAMES[attack]} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + f"\n\nPSNR in dB, mean ± std over {most} photos per cell (fewer where n is shown).\n"
    failed = [r for r in rows if not math.isfinite(r["psnr"])]
    if failed:
        text += f"\n{len(failed)} run(s) failed and are left out of the means:\n"
        text += "".join(f"- {' '.join(map(str, key(r)))}: {r['status']}\n" for r in failed)
    cross = crossing_lines(rows)
    if cross:
        head = (
            "| model | init | curves | cross at relative level | above at the lowest level > 0 |\n|---|---|---|---|---|"
        )
        text += "\nWhere the mean curves cross (log-linear interpolation between levels; level 0 left out):\n\n"
        text += head + "\n" + "\n".join(cross) + "\n"
    return text


def fmt_level(level: float) -> str:
    """0, 1e-05, 0.0025 -> "0", "1e-5", "2.5e-3": the column heads in the paper's notation."""
    if level == 0:
        return "0"
    mantissa, exponent = f"{level:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _cell(values: list[float], most: int) -> str:
    if not values:
        return ""
    text = "{:.1f} ± {:.1f}".format(*mean_std(values))
    return text if len(values) == most else f"{text} (n={len(values)})"


def _order(attack: str) -> int:
    return list(ATTACKS).index(attack) if attack in ATTACKS else len(ATTACKS)


def plot(rows: list[dict], path: Path) -> None:
    """One panel per (model, init): mean PSNR against the relative level (log x, level 0 one decade left of the
    smallest level), a band of +- one std over the images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = curves(rows)
    models = sorted({m for m, _, _ in data})
    inits = sorted({i for _, i, _ in data})
    positive = [lv for lv in {float(r["level"]) for r in rows} if lv > 0]
    zero_at = min(positive) / 10 if positive else 1e-6
    fig, axes = plt.subplots(len(models), len(inits), figsize=(5.5 * len(inits), 4 * len(models)), squeeze=False)
    for (model, init, attack), per_level in sorted(data.items(), key=lambda kv: _order(kv[0][2])):
        ax = axes[models.index(model)][inits.index(init)]
        levels = sorted(per_level)
        stats = [mean_std(per_level[lv]) for lv in levels]
        xs = [lv if lv > 0 else zero_at for lv in levels]
        mean = [m for m, _ in stats]
        color = f"C{_order(attack)}"  # one colour per attack in every panel
        ax.semilogx(xs, mean, "o-", color=color, label=NAMES[attack])
        low, high = [max(m - s, 0.0) for m, s in stats], [min(m + s, 100.0) for m, s in stats]  # PSNR capped at 100
        ax.fill_between(xs, low, high, color=color, alpha=0.2)
    ticks = [zero_at, *sorted(positive)]
    for model in models:
        for init in inits:
            ax = axes[models.index(model)][inits.index(init)]
            ax.set_xticks(ticks, ["0", *(f"$10^{{{round(math.log10(t))}}}$" for t in ticks[1:])])
            std = " N(0, 0.01)" if init == "normal" else " (PyTorch)"
            ax.set(title=f"{model}, init {init}{std}", ylabel="PSNR (dB)",
                   xlabel="relative noise: sigma / RMS of the update")  # fmt: skip
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn6", "fcn3"])
    parser.add_argument("--inits", nargs="+", default=["default", "normal"], choices=["default", "normal"])
    parser.add_argument("--attacks", nargs="+", default=["rgap_plain", "rgap", "dlg", "ig"], choices=list(ATTACKS))
    parser.add_argument("--levels", nargs="+", type=float, default=LEVELS)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--recompute", action="store_true", help="replace the CSV's rows of this run's grid")
    parser.add_argument("--show", action="store_true", help="print each row's CLI command, run nothing")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    register_schemas()
    grid = [(m, i, a, lv, im) for m in args.models for i in args.inits for a in args.attacks for lv in args.levels
            for im in range(args.images)]  # fmt: skip
    if args.show:
        for row in grid:
            print("python -m rgap_bench " + " ".join(overrides_for(*row)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "noise_curve.csv"
    todo = set(grid)
    rows = {key(r): r for r in read_rows(path) if not (args.recompute and key(r) in todo)}
    commit = git_commit()
    for row_key in grid:
        if row_key in rows:
            continue
        row = run_one(*row_key, commit=commit)
        rows[row_key] = row
        write_rows(list(rows.values()), path)
        print(f"{' '.join(map(str, row_key))}: {row['psnr']:.2f} dB ({row['time_s']:.1f} s)", flush=True)
    text = table(list(rows.values()))
    (args.out / "noise_curve.md").write_text(text)
    plot(list(rows.values()), args.out / "noise_curve.png")
    print(text)


if __name__ == "__main__":
    main()
