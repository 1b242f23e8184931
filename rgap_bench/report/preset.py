"""Run an experiment preset as a sweep, then report it: what `benchmarks/table1.py` and `rank_vs_leakage.py` are.

The sweep runs in a child process exactly as a user would type it (`python -m rgap_bench -m experiment=<preset>
...`), so a script that reproduces a table goes through the same config system, launchers, isolation and resume as
any sweep; the table is the report's.
"""

from __future__ import annotations

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
