"""R-GAP speed benchmark: attack time, per-layer split, PSNR and peak memory, against the naive dense path.

Every case runs in its own subprocess (so its peak memory is its own); inside it, the chosen solver runs
`--repeats` times (median reported) and, where it fits, the plain dense float64 least-squares path runs once in the
same process as the reference for the speed ratio. Prints a Markdown table and writes it to benchmarks/results/.

    python benchmarks/rgap_speed.py                  # all cases
    python benchmarks/rgap_speed.py --cases cnn6-32 fcn3 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    # name: (model, image size, channels, dtype, run the dense reference?)
    "cnn6-32": ("cnn6", 32, 3, "float64", True),
    "cnn6-32-f32": ("cnn6", 32, 3, "float32", True),
    "cnn6-64": ("cnn6", 64, 3, "float64", False),
    "cnn6-128": ("cnn6", 128, 3, "float64", False),
    "wide-128": ("wide", 128, 3, "float64", False),
    "fcn3": ("fcn3", 28, 1, "float64", True),
    "fcn3-wide": ("fcn3-wide", 28, 1, "float64", False),
}
RESULTS = Path(__file__).resolve().parent / "results"


def build(model_name: str, size: int, channels: int):
    import torch

    from rgap_bench.data.digits import EmbeddedDigits
    from rgap_bench.data.photos import EmbeddedPhotos
    from rgap_bench.fl.client import FedSGDClient
    from rgap_bench.models import build_from_specs, cnn6, fcn3
    from rgap_bench.models.layers import LayerSpec

    torch.manual_seed(0)
    if model_name in ("cnn6", "wide"):
        # "wide": a CNN6-like net whose layers stay over-determined at 128x128 (CNN6's conv2 does not).
        wide = [LayerSpec("conv", 12, 4, 2, 2), LayerSpec("conv", 64, 3, 2, 1), LayerSpec("conv", 64, 3, 1, 1)]
        head = [LayerSpec("linear", 1, activation="identity")]
        model = (
            cnn6(image_size=size) if model_name == "cnn6" else build_from_specs("wide", (3, size, size), wide + head)
        )
        data = EmbeddedPhotos(name="photos", image_size=size, channels=channels, index=0)
    else:
        widths = (1000, 100, 1) if model_name == "fcn3" else (4000, 1000, 1)
        model = (
            fcn3()
            if model_name == "fcn3"
            else build_from_specs("fcn3-wide", (1, 28, 28), [LayerSpec("linear", w) for w in widths])
        )
        data = EmbeddedDigits(name="digits", image_size=size, channels=channels, index=2500)
    batch = data.private_batch(0)
    return model, batch, FedSGDClient(model).compute_update(batch)


def timed_attack(model, update, batch, **kwargs) -> dict:
    from rgap_bench.attacks.rgap import RGAP
    from rgap_bench.metrics import reconstruction_metrics

    start = time.perf_counter()
    rec = RGAP(rank="off", **kwargs)(model, update)
    elapsed = time.perf_counter() - start
    scores = reconstruction_metrics(rec.inputs, batch.inputs)
    return {
        "time_s": elapsed,
        "psnr": scores["psnr"],
        "layers": [(r.layer, round(r.time_s, 4), r.iterations, r.solver) for r in rec.layers],
    }


def run_case(name: str, solver: str, repeats: int) -> dict:
    model_name, size, channels, dtype, with_reference = CASES[name]
    model, batch, update = build(model_name, size, channels)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    runs = [timed_attack(model, update, batch, solver=solver, dtype=dtype) for _ in range(repeats)]
    median = statistics.median(r["time_s"] for r in runs)
    closest = min(runs, key=lambda r: abs(r["time_s"] - median))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "case": name,
        "solver": solver,
        "dtype": dtype,
        "median_s": median,
        "runs_s": [r["time_s"] for r in runs],
        "psnr": closest["psnr"],
        "layers": closest["layers"],
        "peak_rss_mb": peak_rss,
        "rss_before_attack_mb": base_rss,
    }
    if with_reference:
        ref = timed_attack(model, update, batch, solver="lstsq", dtype="float64")
        out.update(reference_s=ref["time_s"], reference_psnr=ref["psnr"], speedup=ref["time_s"] / median)
    return out


def child_main(args: argparse.Namespace) -> None:
    print(json.dumps(run_case(args.child, args.solver, args.repeats)))


def markdown(rows: list[dict]) -> str:
    lines = [
        "| case | solver | dtype | median attack time (s) | PSNR (dB) | dense lstsq ref (s) | ref PSNR | speed-up | "
        "peak RSS (MB) | per-layer time s (iterations) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['solver']} | | failed: {r['error'][:80]} | | | | | | |")
            continue
        split = ", ".join(f"{t:.3f}" + (f" ({it})" if it else "") for _, t, it, _ in r["layers"])
        ref = (
            (f"{r['reference_s']:.2f}", f"{r['reference_psnr']:.1f}", f"{r['speedup']:.0f}x")
            if "reference_s" in r
            else ("-", "-", "-")
        )
        lines.append(
            f"| {r['case']} | {r['solver']} | {r['dtype']} | {r['median_s']:.3f} | {r['psnr']:.1f} | {ref[0]} | "
            f"{ref[1]} | {ref[2]} | {r['peak_rss_mb']:.0f} | {split} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--solver", default="auto", help="attack.solver for the measured runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    rows = []
    for case in args.cases:
        repeats = 1 if case.endswith("128") else args.repeats
        cmd = [sys.executable, __file__, "--child", case, "--solver", args.solver, "--repeats", str(repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"case": case, "solver": args.solver, "error": proc.stderr.strip().splitlines()[-1]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"done {case}", file=sys.stderr)
    table = markdown(rows)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rgap_speed.md").write_text(
        "Command: `python benchmarks/rgap_speed.py " + " ".join(sys.argv[1:]) + "`\n\n" + table + "\n"
    )
    (RESULTS / "rgap_speed.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
