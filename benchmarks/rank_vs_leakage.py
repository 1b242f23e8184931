"""Does the rank analysis predict leakage? RA index (before any attack) against measured PSNR.

A family of CNN6-like nets on 32x32 photos whose conv2 varies in width and stride (from clearly over- to clearly
under-determined); for each: the RA index from `rgap_bench.rank`, then R-GAP (and, with --ig-iterations > 0,
inverting gradients with a small budget) on a few embedded photos. Writes a scatter PNG and a Markdown table
with Spearman correlations to benchmarks/results/.

    .venv/bin/python benchmarks/rank_vs_leakage.py --images 2 --ig-iterations 0
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from rgap_bench.attacks.rgap import RGAP
from rgap_bench.data.photos import EmbeddedPhotos
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.metrics import reconstruction_metrics
from rgap_bench.models import LayerSpec, build_from_specs
from rgap_bench.rank import analyse_model

RESULTS = Path(__file__).resolve().parent / "results"
# conv2 (out channels, stride); CNN6 is (36, 2), CNN6-d is (20, 2).
FAMILY = [(48, 1), (12, 1), (64, 2), (36, 2), (28, 2), (24, 2), (20, 2), (16, 2), (12, 2), (8, 2), (4, 2)]


def cnn6_variant(conv2: int, stride: int, image_size: int) -> torch.nn.Module:
    conv = [(12, 4, 2, 2), (conv2, 3, stride, 1), (36, 3, 1, 1), (36, 3, 1, 1), (64, 3, 2, 1), (128, 3, 1, 1)]
    specs = [LayerSpec("conv", o, k, s, p) for o, k, s, p in conv] + [LayerSpec("linear", 1, activation="identity")]
    return build_from_specs(f"c2-{conv2}-s{stride}", (3, image_size, image_size), specs)


def attack_psnr(model: torch.nn.Module, attack, index: int, image_size: int) -> float:
    batch = EmbeddedPhotos(name="photos", image_size=image_size, index=index).private_batch(0)
    update = FedSGDClient(model).compute_update(batch)
    rec = attack(model.eval(), update)
    return float(reconstruction_metrics(rec.inputs.detach(), batch.inputs)["psnr"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--ig-iterations", type=int, default=0, help="0 skips the gradient-matching attack")
    parser.add_argument(
        "--joint", action="store_true", help="also run attack=rgap as configured by default (null space carried down)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    for conv2, stride in FAMILY:
        torch.manual_seed(0)
        model = cnn6_variant(conv2, stride, args.image_size)
        report = analyse_model(model, numeric=False)  # the bound: the index before any attack or eigensolver
        start = time.perf_counter()
        rgap = [attack_psnr(model, RGAP(rank="off"), i, args.image_size) for i in range(args.images)]
        ig = None
        if args.ig_iterations > 0:  # gradient matching (rgap_bench.attacks.ig), small budget
            from rgap_bench.attacks.ig import InvertingGradients

            attack = InvertingGradients(max_iterations=args.ig_iterations, restarts=1)
            ig = float(np.mean([attack_psnr(model, attack, i, args.image_size) for i in range(args.images)]))
        joint = None
        if args.joint:  # exact ranks + joint null-space solve: predicted by e_0, not by the RA index
            joint = float(np.mean([attack_psnr(model, RGAP(), i, args.image_size) for i in range(args.images)]))
        worst = report.layers[report.worst_layer] if report.worst_layer is not None else None
        rows.append({
            "model": model.name, "ra_index": report.ra_index,
            "worst_layer": f"{worst.index}: {worst.carried_deficiency}/{worst.unknowns}" if worst else "-",
            "naive_conv2": report.layers[1].naive_deficiency, "rgap_psnr": float(np.mean(rgap)),
            "rgap_psnr_min": float(np.min(rgap)), "ig_psnr": ig, "time_s": time.perf_counter() - start,
            "input_undetermined": report.input_undetermined, "rgap_joint_psnr": joint,
        })  # fmt: skip
        print(json.dumps(rows[-1]))
    write(rows, args)


def write(rows: list[dict], args: argparse.Namespace) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ra = [r["ra_index"] for r in rows]
    rho_rgap = spearmanr(ra, [r["rgap_psnr"] for r in rows])
    lines = [
        f"# RA index vs measured leakage ({args.image_size}x{args.image_size} photos, {args.images} images each)",
        "",
        "| model | RA index | worst layer (carried null / n) | paper count conv2 | R-GAP PSNR mean | min | IG PSNR |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ig = "-" if r["ig_psnr"] is None else f"{r['ig_psnr']:.1f}"
        lines.append(
            f"| {r['model']} | {r['ra_index']:.4f} | {r['worst_layer']} | {r['naive_conv2']} | "
            f"{r['rgap_psnr']:.1f} | {r['rgap_psnr_min']:.1f} | {ig} |"
        )
    lines += ["", f"Spearman(RA index, R-GAP PSNR) = {rho_rgap.statistic:.3f} (p = {rho_rgap.pvalue:.3g})"]
    if all(r["ig_psnr"] is not None for r in rows):
        rho_ig = spearmanr(ra, [r["ig_psnr"] for r in rows])
        lines.append(f"Spearman(RA index, IG PSNR) = {rho_ig.statistic:.3f} (p = {rho_ig.pvalue:.3g})")
    else:
        lines.append("IG not run (--ig-iterations 0).")
    stem = "rank_vs_leakage"
    if all(r.get("rgap_joint_psnr") is not None for r in rows):
        stem = "rank_vs_leakage_joint"
        lines += ["", "| model | input undetermined e_0 | R-GAP joint (default attack=rgap) PSNR |", "|---|---|---|"]
        lines += [f"| {r['model']} | {r['input_undetermined']} | {r['rgap_joint_psnr']:.1f} |" for r in rows]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
    fig = Figure(figsize=(5, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(ra, [r["rgap_psnr"] for r in rows], label="R-GAP")
    if all(r["ig_psnr"] is not None for r in rows):
        ax.scatter(ra, [r["ig_psnr"] for r in rows], marker="x", label="IG")
    for r in rows:
        ax.annotate(r["model"], (r["ra_index"], r["rgap_psnr"]), fontsize=6)
    ax.set_xlabel("RA index (max carried null / unknowns)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"rho_s = {rho_rgap.statistic:.2f}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
