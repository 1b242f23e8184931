"""Run an experiment preset as a sweep, then report it: what `benchmarks/table1.py` and `rank_vs_leakage.py` are.

The sweep runs in a child process exactly as a user would type it (`python -m rgap_bench -m experiment=<preset>
...`), so a script that reproduces a table goes through the same config system, launchers, isolation and resume as
any sweep; the table is the report's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from rgap_bench.report.writer import SweepReport, write_report


def default_sweep_dir(preset: str) -> Path:
    """`outputs/benchmarks/<preset>_<date>_<time>`: one directory per run of a benchmark script."""
    return Path("outputs") / "benchmarks" / f"{preset}_{datetime.now():%Y-%m-%d_%H-%M-%S}"


def run_preset(preset: str, overrides: list[str], sweep_dir: Path, threads: int = 0) -> SweepReport:
    """Sweep `experiment=<preset>` with `overrides` into `sweep_dir` (rerun with `resume=true` to finish a killed
    one), then write its report there. `threads` > 0 sets each job's OpenMP/MKL threads."""
    env = dict(os.environ)
    if threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    command = [sys.executable, "-m", "rgap_bench", "-m", f"experiment={preset}", *overrides,
               f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    print("$ python", " ".join(command[1:]), flush=True)
    done = subprocess.run(command, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the sweep stopped (exit {done.returncode}); fix the cause above and rerun with resume=true")
    return write_report(Path(sweep_dir))


def preset_script(preset: str, description: str, count_flag: str, count_default: int, count_help: str) -> SweepReport:
    """The command line every preset wrapper shares: `--<count_flag> N` images (data.index=0,...,N-1), `--threads`,
    `--sweep-dir`, `--report DIR` (only report a finished sweep) and any Hydra override; returns the report."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(f"--{count_flag}", type=int, default=count_default, dest="count", help=count_help)
    parser.add_argument("--threads", type=int, default=0, help="threads per job (0: the launcher's default)")
    parser.add_argument("--sweep-dir", type=Path, default=None, help=f"default: outputs/benchmarks/{preset}_<time>")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR", help="only report the sweep in DIR")
    args, overrides = parser.parse_known_args()
    if args.report is not None:
        return write_report(args.report)
    indices = ",".join(str(i) for i in range(args.count))
    sweep_dir = args.sweep_dir or default_sweep_dir(preset)
    return run_preset(preset, [f"data.index={indices}", *overrides], sweep_dir, args.threads)
