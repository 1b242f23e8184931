"""The paper's noise experiment, rerun: PSNR of R-GAP (plain and noise-aware), DLG and IG against the relative
level of Gaussian noise on the update (sigma = level x the update's RMS, `defense.gaussian.relative=true`).

Every run is the CLI's own job (`rgap_bench.task.run_experiment`) on a config composed from Hydra overrides, so the
benchmark is exactly `python -m rgap_bench <overrides>` and nothing here copies the config:

    python benchmarks/noise_curve.py                                   # cnn6 + fcn3, 6 levels, 5 photos each
    python benchmarks/noise_curve.py --images 2 --levels 0 1e-4 1e-3 --attacks rgap rgap_plain   # a quick look

Writes noise_curve.csv, noise_curve.png and noise_curve.md to --out (default outputs/noise_curve). Weights: the
PyTorch default initialisation with seed 0 (the paper's utils.weight_init, N(0, 0.01), is not applied: no model
option exists for it yet). Models on the embedded photos (3x32x32; fcn3 then has 3072 inputs).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_module

from rgap_bench.config import register_schemas
from rgap_bench.logging.base import NullLogger
from rgap_bench.task import run_experiment

ATTACKS = {  # label -> Hydra overrides
    "rgap_plain": ["attack=rgap", "attack.rank=off", "attack.refit_pattern=false"],
    "rgap": ["attack=rgap", "attack.rank=off"],  # noise-aware: pattern refit (the default)
    "rgap_gcv": ["attack=rgap", "attack.rank=off", "attack.regularize=gcv"],
    "dlg": ["attack=dlg", "attack.max_iterations=300"],
    "ig": ["attack=ig", "attack.max_iterations=1000"],
}
LEVELS = [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]


def run_one(model: str, attack: str, level: float, image: int) -> dict:
    overrides = ["logger=none", "save_images=false", "print_summary=false", f"model={model}", "data=photos"]
    overrides += [f"data.index={image}", *ATTACKS[attack]]
    if level > 0:
        overrides += ["defense=gaussian", f"defense.gaussian.sigma={level}", "defense.gaussian.relative=true"]
    with initialize_config_module("rgap_bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        metrics = run_experiment(cfg, Path(run_dir), NullLogger())
    return {"model": model, "attack": attack, "level": level, "image": image, "psnr": metrics["psnr"],
            "mse": metrics["mse"], "time_s": time.perf_counter() - start}  # fmt: skip


def table(rows: list[dict]) -> str:
    """Mean PSNR per (model, attack) and level, as Markdown."""
    levels = sorted({r["level"] for r in rows})
    lines = ["| model | attack | " + " | ".join(f"{lv:g}" for lv in levels) + " |"]
    lines.append("|---" * (len(levels) + 2) + "|")
    for model in dict.fromkeys(r["model"] for r in rows):
        for attack in dict.fromkeys(r["attack"] for r in rows):
            cells = []
            for lv in levels:
                got = [r["psnr"] for r in rows if (r["model"], r["attack"], r["level"]) == (model, attack, lv)]
                cells.append(f"{sum(got) / len(got):.1f}" if got else "")
            lines.append(f"| {model} | {attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for attack in dict.fromkeys(r["attack"] for r in rows):
            levels = sorted({r["level"] for r in rows if r["model"] == model and r["attack"] == attack})
            means = [
                sum(r["psnr"] for r in rows if (r["model"], r["attack"], r["level"]) == (model, attack, lv))
                / sum(1 for r in rows if (r["model"], r["attack"], r["level"]) == (model, attack, lv))
                for lv in levels
            ]
            xs = [max(lv, 1e-7) for lv in levels]  # level 0 drawn at 1e-7 on the log axis
            ax.semilogx(xs, means, "o-", label=attack)
        ax.set(title=model, xlabel="relative noise (sigma / RMS of the update; 0 at 1e-7)", ylabel="PSNR (dB)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn6", "fcn3"])
    parser.add_argument("--attacks", nargs="+", default=["rgap_plain", "rgap", "dlg", "ig"], choices=list(ATTACKS))
    parser.add_argument("--levels", nargs="+", type=float, default=LEVELS)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("outputs/noise_curve"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    register_schemas()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models:
        for attack in args.attacks:
            for level in args.levels:
                for image in range(args.images):
                    row = run_one(model, attack, level, image)
                    rows.append(row)
                    psnr = row["psnr"] if math.isfinite(row["psnr"]) else float("nan")
                    print(f"{model} {attack} level {level:g} image {image}: {psnr:.2f} dB ({row['time_s']:.1f} s)")
    with open(args.out / "noise_curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "noise_curve.md").write_text(table(rows))
    plot(rows, args.out / "noise_curve.png")
    print(table(rows))


if __name__ == "__main__":
    main()
