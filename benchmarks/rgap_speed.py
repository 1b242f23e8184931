"""R-GAP speed benchmark: attack time, per-layer split, PSNR and peak memory, against the naive dense path.

Every case runs in its own subprocess (so its peak memory is its own); inside it, the chosen solver runs
`--repeats` times (median reported) and, where it fits, the plain dense float64 least-squares path runs once in the
same process as the reference for the speed ratio. Prints a Markdown table and writes it to benchmarks/results/
(rgap_speed.md/.json on the CPU, rgap_speed_cuda.md/.json with --device cuda; --out picks another name).

    python benchmarks/rgap_speed.py                  # all cases
    python benchmarks/rgap_speed.py --cases cnn6-32 fcn3 --repeats 5
    python benchmarks/rgap_speed.py --device cuda --case-timeout 240
    python benchmarks/rgap_speed.py --cases cnn6-32-auto --repeats 5 --no-reference --baseline-rank off

--clock cpu (with OMP_NUM_THREADS=1) times by CPU time instead, for a shared machine.
cnn6-32-batch64 is "64 images, one call": RGAP.attack_many on 64 photos' updates (one batched PCG per conv layer)
against 64 separate default calls, interleaved round by round in the same process (its own results file with
--out, e.g. --out benchmarks/results/rgap_speed_batch).
--baseline-rank times another attack.rank in the same process, interleaved with the measured runs, and reports
its median beside the case's: on a shared machine the ratio holds where absolute times do not.

With --device cuda the model, the client's update and the attack all live on the GPU (the attack follows the
model's weights), every timing is taken after torch.cuda.synchronize(), one untimed warm-up run comes first, and
the peak of torch.cuda.max_memory_allocated is reported next to the process's peak RSS. The dense reference is
host code (scipy/LAPACK) and runs only for the 32x32 cases there. cuDNN runs float32 convolutions in TF32 by
default on Ampere and later GPUs; --tf32 off (the default here) turns that off for the client's update so float32
is float32, as on the CPU (the attack itself always turns it off for its own solves).
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
    # name: (model, image size, channels, dtype, reference run in the same process: True for the dense lstsq path,
    # a dict for the default attack with those options, False for none)
    "cnn6-32": ("cnn6", 32, 3, "float64", True),
    "cnn6-32-f32": ("cnn6", 32, 3, "float32", True),
    # the default rank=auto: conv1 proven full rank by its weight rows' Fourier symbol (linalg/symbol.py), conv2 by
    # the matrix-free probe (solvers/krylov.py), conv3-6 by their gradient rows
    "cnn6-32-auto": ("cnn6", 32, 3, "float64", True, {"rank": "auto"}),
    "cnn6-64": ("cnn6", 64, 3, "float64", False),
    # the default rank=auto: conv2 (13068 unknowns, 72 predicted free directions) by Woodbury over its banded weight
    # rows (solvers/woodbury.py), conv1 jointly with the 72 coefficients by one factorisation (joint_direct.py)
    "cnn6-64-joint": ("cnn6", 64, 3, "float64", False, {"rank": "auto"}),
    # rank=auto on a conv of 9216 unknowns with 1704 null directions (9x32x32 -> 24 filters, k3 s2 p1), solved jointly
    # with the conv below it (3x32x32 -> 9 filters, k3 s1 p1): attack.joint=composed (the default, 6144 weight rows
    # composed with the conv below, no null space), against the null-space route (dense factorisation) in the process
    "deficient-32-joint": ("deficient", 32, 3, "float64", {"joint": "null_space"}, {"rank": "auto"}),
    "cnn6-128": ("cnn6", 128, 3, "float64", False),
    # the default rank=auto: conv1 and conv2 proven full rank by their weight rows' symbol; every conv solved by PCG
    # with the circulant preconditioner (linalg/circulant.py)
    "wide-128": ("wide", 128, 3, "float64", False, {"rank": "auto"}),
    "fcn3": ("fcn3", 28, 1, "float64", True),
    # 64 images in one call (RGAP.attack_many: one batched PCG per conv layer) against 64 separate default calls in
    # the same process; the 40 embedded photos plus horizontal flips of photos 0-23
    "cnn6-32-batch64": ("cnn6", 32, 3, "float64", False, {"batch": 64}),
    "fcn3-wide": ("fcn3-wide", 28, 1, "float64", False),
}
RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE_ON_GPU = ("cnn6-32", "cnn6-32-f32")  # the host reference is slow: on the GPU, only the 32x32 cases


def device_info(device: str) -> dict:
    import torch

    info = {"device": device, "torch": torch.__version__}
    if device == "cuda":
        from rgap_bench.linalg.precision import conv_precision

        info.update(device_name=torch.cuda.get_device_name(), cuda=torch.version.cuda, conv_fp32=conv_precision())
    else:
        import platform

        info.update(
            device_name=f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        )
    return info


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def expensive(case: str) -> bool:
    """Cases that run once (no repeats, a cheap warm-up on the GPU); wide-128 (~5 s) and cnn6-64-joint (~10 s) take
    their repeats."""
    return case == "cnn6-128"


def build(model_name: str, size: int, channels: int, device: str = "cpu"):
    import torch

    from rgap_bench.data.digits import EmbeddedDigits
    from rgap_bench.data.photos import EmbeddedPhotos
    from rgap_bench.fl.client import FedSGDClient
    from rgap_bench.models import build_from_specs, cnn6, fcn3
    from rgap_bench.models.layers import LayerSpec

    torch.manual_seed(0)  # the weights are drawn on the host, so every device attacks the same model
    if model_name == "deficient":  # the rank-deficient conv of issue 13 (see CASES)
        specs = [LayerSpec("conv", 9, 3, 1, 1), LayerSpec("conv", 24, 3, 2, 1), LayerSpec("conv", 36, 3, 1, 1)]
        model = build_from_specs("deficient", (3, size, size), [*specs, LayerSpec("linear", 1, activation="identity")])
        data = EmbeddedPhotos(name="photos", image_size=size, channels=channels, index=0)
    elif model_name in ("cnn6", "wide"):
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
    client = FedSGDClient(model).to(device)
    return model, batch, client.compute_update(batch)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = CLOCKS["wall"]  # --clock cpu: the process's CPU time (with one thread, the attack's own work on a busy host)


def timed_attack(model, update, batch, device: str = "cpu", **kwargs) -> dict:
    from rgap_bench.attacks.rgap import RGAP
    from rgap_bench.metrics import reconstruction_metrics

    sync(device)
    start = CLOCK()
    rec = RGAP(**{"rank": "off", **kwargs})(model, update)
    sync(device)
    elapsed = CLOCK() - start
    scores = reconstruction_metrics(rec.inputs, batch.inputs)
    return {
        "time_s": elapsed,
        "psnr": scores["psnr"],
        # (layer, seconds, PCG iterations, solver, what gave its rank verdict: "" where none was measured)
        "layers": [
            (r.layer, round(r.time_s, 4), r.iterations, r.solver, r.rank_method or ("" if r.rank is None else r.solver))
            for r in rec.layers
        ],
    }


def photo_updates(client, count: int, size: int) -> tuple[list, list]:
    """`count` photos' updates (the embedded photos, then horizontal flips of the first ones) and their images."""
    import dataclasses

    from rgap_bench.data.photos import EmbeddedPhotos

    photos = [EmbeddedPhotos(name="photos", image_size=size, channels=3, index=i).private_batch(0) for i in range(40)]
    flips = [dataclasses.replace(b, inputs=b.inputs.flip(-1)) for b in photos[: max(count - len(photos), 0)]]
    batches = (photos + flips)[:count]
    return [client.compute_update(b) for b in batches], [b.inputs for b in batches]


def run_batch_case(name: str, count: int, solver: str, repeats: int, device: str = "cpu") -> dict:
    """`count` CNN6 images in one `attack_many` call against one default call per image, interleaved in one process
    (so that both see the same load); per-image times are the medians over `repeats` rounds divided by `count`."""
    import torch

    from rgap_bench.attacks.rgap import RGAP
    from rgap_bench.fl.client import FedSGDClient
    from rgap_bench.metrics import reconstruction_metrics

    model_name, size, channels, dtype, *_ = CASES[name]
    model, _, _ = build(model_name, size, channels, device)
    updates, images = photo_updates(FedSGDClient(model).to(device), count, size)
    attack = RGAP(solver=solver, dtype=dtype)
    warmup_s = None
    if device == "cuda":  # context, handles and kernels, on a few images
        start = CLOCK()
        attack.attack_many(model, updates[:4])
        sync(device)
        warmup_s = CLOCK() - start
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def one_call() -> list:
        recs = attack.attack_many(model, updates)
        sync(device)
        return recs

    def separate_calls() -> list:
        recs = [attack(model, update) for update in updates]
        sync(device)
        return recs

    batched, looped = [], []
    for round_ in range(repeats):  # the order alternates, so that neither side always comes first
        for which in ("one", "loop") if round_ % 2 == 0 else ("loop", "one"):
            sync(device)
            start = CLOCK()
            if which == "one":
                recs = one_call()
                batched.append(CLOCK() - start)
            else:
                alone = separate_calls()
                looped.append(CLOCK() - start)
    scores = [reconstruction_metrics(r.inputs, x)["psnr"] for r, x in zip(recs, images, strict=True)]
    one, loop = statistics.median(batched), statistics.median(looped)
    ratios = [b / s for b, s in zip(batched, looped, strict=True)]  # each round's pair ran back to back
    diff = max(float((r.inputs - a.inputs).abs().max()) for r, a in zip(recs, alone, strict=True))
    out = {
        "case": name, "solver": solver, "dtype": dtype, **device_info(device),
        "images": count, "total_s": one, "median_s": one / count, "runs_s": batched, "loop_per_image_s": loop / count,
        "loop_runs_s": looped, "ratio_to_loop": one / loop, "round_ratios": ratios,
        "psnr": statistics.mean(scores), "psnr_min": min(scores),
        "max_abs_diff_to_separate": diff,
        "exact": sum(r.status == "exact" for r in recs), "warmup_s": warmup_s, "layers": [],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_attack_mb": base_rss,
    }  # fmt: skip
    if device == "cuda":
        out.update(peak_cuda_mb=torch.cuda.max_memory_allocated() / 2**20)
    return out


def run_case(
    name: str, solver: str, repeats: int, device: str = "cpu", reference: bool = True, baseline: str | None = None
) -> dict:
    import torch

    model_name, size, channels, dtype, with_reference, *extra = CASES[name]
    options = extra[0] if extra else {}
    if "batch" in options:
        return run_batch_case(name, options["batch"], solver, repeats, device)
    model, batch, update = build(model_name, size, channels, device)
    warmup_s = cuda_base = None
    if device == "cuda":
        # Untimed warm-up: CUDA context, cuBLAS/cuSOLVER handles and lazily loaded kernels. The expensive cases run
        # once, so they warm up on the cheap 32x32 CNN6 instead of paying for a second full run.
        if expensive(name):
            warm_model, warm_batch, warm_update = build("cnn6", 32, 3, device)
            warmup_s = timed_attack(warm_model, warm_update, warm_batch, device=device, solver=solver, dtype=dtype)
            warmup_s = warmup_s["time_s"]
            del warm_model, warm_update
        else:
            warmup_s = timed_attack(model, update, batch, device=device, solver=solver, dtype=dtype, **options)[
                "time_s"
            ]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated() / 2**20
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    runs, base_runs = [], []
    for _ in range(repeats):  # the baseline (another attack.rank) interleaved, so that both see the same load
        runs.append(timed_attack(model, update, batch, device=device, solver=solver, dtype=dtype, **options))
        if baseline is not None:
            base_options = {**options, "rank": baseline}
            base_runs.append(
                timed_attack(model, update, batch, device=device, solver=solver, dtype=dtype, **base_options)
            )
    median = statistics.median(r["time_s"] for r in runs)
    closest = min(runs, key=lambda r: abs(r["time_s"] - median))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "case": name,
        "solver": solver,
        "dtype": dtype,
        **device_info(device),
        "median_s": median,
        "runs_s": [r["time_s"] for r in runs],
        "warmup_s": warmup_s,
        "psnr": closest["psnr"],
        "layers": closest["layers"],
        "peak_rss_mb": peak_rss,
        "rss_before_attack_mb": base_rss,
    }
    if base_runs:
        base = statistics.median(r["time_s"] for r in base_runs)
        out.update(baseline_rank=baseline, baseline_median_s=base, ratio_to_baseline=median / base)
    if device == "cuda":
        out.update(
            peak_cuda_mb=torch.cuda.max_memory_allocated() / 2**20,
            peak_cuda_reserved_mb=torch.cuda.max_memory_reserved() / 2**20,
            cuda_before_attack_mb=cuda_base,
        )
    if device == "cuda" and name not in REFERENCE_ON_GPU:
        with_reference = False
    if isinstance(with_reference, dict) and reference:  # the default attack with other options, once
        ref = timed_attack(model, update, batch, device=device, solver=solver, dtype=dtype, **options, **with_reference)
        out.update(reference_s=ref["time_s"], reference_psnr=ref["psnr"], speedup=ref["time_s"] / median,
                   reference=" ".join(f"attack.{k}={v}" for k, v in with_reference.items()))  # fmt: skip
    elif with_reference and reference:
        # Host code whatever the device (the explicit path assembles scipy matrices in float64).
        ref = timed_attack(model, update, batch, device=device, solver="lstsq", dtype="float64")
        out.update(reference_s=ref["time_s"], reference_psnr=ref["psnr"], speedup=ref["time_s"] / median)
    return out


def child_main(args: argparse.Namespace) -> None:
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    from contextlib import nullcontext

    from rgap_bench.linalg.precision import conv_tf32

    mode = conv_tf32(args.tf32 == "on") if args.device == "cuda" and args.tf32 != "default" else nullcontext()
    with mode:
        out = run_case(args.child, args.solver, args.repeats, args.device, not args.no_reference, args.baseline_rank)
        print(json.dumps(out))


def layer_cell(layer: list) -> str:
    """'0.123 (160) [weight-row symbol bound]': seconds, PCG iterations, what gave the rank verdict (older
    results have no verdict field)."""
    _, seconds, iterations, _, *verdict = layer
    how = verdict[0] if verdict else ""
    return f"{seconds:.3f}" + (f" ({iterations})" if iterations else "") + (f" [{how}]" if how else "")


def batch_note(r: dict) -> str:
    """A batch row's last cell: the one call against one call per image (in the same process), and the scores."""
    if "images" not in r:
        return ""
    return (
        f"{r['images']} images in one call: {r['total_s']:.2f} s, {r['median_s']:.4f} s/image; {r['images']} "
        f"separate calls in the same process: {r['loop_per_image_s']:.4f} s/image (one call / separate = "
        f"{r['ratio_to_loop']:.2f}, per round {', '.join(f'{x:.2f}' for x in r.get('round_ratios', []))}); PSNR "
        f"mean {r['psnr']:.1f}, min {r['psnr_min']:.1f} dB, {r['exact']} exact, images within "
        f"{r.get('max_abs_diff_to_separate', float('nan')):.1e} of the separate calls' (photos 0-39 and "
        "horizontal flips of 0-23)"
    )


def markdown(rows: list[dict]) -> str:
    cuda = any(r.get("device") == "cuda" for r in rows)
    columns = 11 if cuda else 10
    lines = [
        "| case | solver | dtype | median attack time (s) | PSNR (dB) | reference (s) | ref PSNR | speed-up | "
        "peak RSS (MB) | " + ("peak CUDA alloc (MB) | " if cuda else "") + "per-layer time s (iterations) |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if cuda else ""),
    ]
    for r in rows:
        if "error" in r:
            cells = [r["case"], r["solver"], "", f"failed: {r['error'][:80]}"] + [""] * (columns - 4)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        split = ", ".join(layer_cell(layer) for layer in r["layers"]) or batch_note(r)
        if "baseline_median_s" in r:
            split += f"; rank={r['baseline_rank']} in the same process: {r['baseline_median_s']:.3f} s"
        ref = (
            (f"{r['reference_s']:.2f}", f"{r['reference_psnr']:.1f}", f"{r['speedup']:.0f}x")
            if "reference_s" in r
            else ("-", "-", "-")
        )
        gpu = f"{r['peak_cuda_mb']:.0f} | " if cuda and "peak_cuda_mb" in r else ("- | " if cuda else "")
        lines.append(
            f"| {r['case']} | {r['solver']} | {r['dtype']} | {r['median_s']:.3f} | {r['psnr']:.1f} | {ref[0]} | "
            f"{ref[1]} | {ref[2]} | {r['peak_rss_mb']:.0f} | {gpu}{split} |"
        )
    return "\n".join(lines)


def header(rows: list[dict], device: str) -> str:
    done = [r for r in rows if "error" not in r]
    if not done:
        return f"Device: {device} (no case finished)"
    r = done[0]
    name = r["device_name"] if device == "cpu" else f"{r['device_name']} (cuda)"
    extra = f", CUDA {r['cuda']}, {r['conv_fp32']}" if device == "cuda" else ""
    return f"Device: {name}, torch {r['torch']}{extra}"


def write(rows: list[dict], stem: Path, device: str) -> str:
    table = markdown(rows)
    stem.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/rgap_speed.py " + " ".join(sys.argv[1:])
    others = [f"{r['case']}: {r['reference']}" for r in rows if "reference" in r]
    note = "Reference: the dense float64 lstsq path in the same process" + (
        f"; the default attack with other options for {'; '.join(others)}" if others else ""
    )
    (stem.parent / (stem.name + ".md")).write_text(
        f"Command: `{command.strip()}`\n\n{header(rows, device)}\n\n{note}.\n\n{table}\n"
    )
    (stem.parent / (stem.name + ".json")).write_text(json.dumps(rows, indent=1))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--solver", default="auto", help="attack.solver for the measured runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where model, update and attack run")
    parser.add_argument("--no-reference", action="store_true", help="skip the dense float64 lstsq reference (host)")
    parser.add_argument(
        "--tf32",
        choices=("off", "on", "default"),
        default="off",
        help="cuda: cuDNN TF32 for float32 convs in the client's update (the attack always runs IEEE float32)",
    )
    parser.add_argument(
        "--baseline-rank",
        choices=("off", "auto", "exact"),
        default=None,
        help="also time this attack.rank in the same process, interleaved (the ratio survives a busy machine)",
    )
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="cpu: time the attacks by the process's CPU time (run with OMP_NUM_THREADS=1 on a shared machine: "
        "other jobs then cost no time; per-layer times stay wall-clock)",
    )
    parser.add_argument("--case-timeout", type=float, default=None, help="seconds before a case is killed")
    parser.add_argument(
        "--out", type=Path, default=None, help="results path without suffix (default results/rgap_speed[_cuda])"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch.cuda.is_available() is False")
    stem = args.out or RESULTS / ("rgap_speed" if args.device == "cpu" else "rgap_speed_cuda")
    rows: list[dict] = []
    for case in args.cases:
        repeats = 1 if expensive(case) else args.repeats
        cmd = [sys.executable, __file__, "--child", case, "--solver", args.solver, "--repeats", str(repeats)]
        cmd += ["--device", args.device, "--tf32", args.tf32] + (["--no-reference"] if args.no_reference else [])
        cmd += ["--baseline-rank", args.baseline_rank] if args.baseline_rank else []
        cmd += ["--clock", args.clock]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout)
        except subprocess.TimeoutExpired:
            rows.append({"case": case, "solver": args.solver, "error": f"timed out after {args.case_timeout:g} s"})
        else:
            if proc.returncode != 0 or not proc.stdout.strip():
                lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
                rows.append({"case": case, "solver": args.solver, "error": lines[-1]})
                print(proc.stderr, file=sys.stderr)
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"done {case} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        write(rows, stem, args.device)  # after every case, so a killed run keeps what it measured
    print(header(rows, args.device) + "\n\n" + markdown(rows))  # the files were written after the last case


if __name__ == "__main__":
    main()
