"""`python -m rgap_bench.report <sweep dir> [--out DIR] [--wandb]`: the answer of a sweep, as files (and W&B)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rgap_bench.report.writer import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rgap_bench.report", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("sweep_dir", type=Path, help="the directory a `python -m rgap_bench -m ...` sweep wrote")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the sweep dir)")
    parser.add_argument(
        "--wandb", action="store_true", help="also log the report as a W&B run (job type report) in the sweep's group"
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a directory; pass the sweep output dir that the sweep printed")
    try:
        report = write_report(args.sweep_dir, args.out)
    except FileNotFoundError as exc:
        parser.error(str(exc))
    out_dir = args.out or args.sweep_dir
    if args.wandb:
        from rgap_bench.report.wandb_report import log_report

        logger = log_report(report, out_dir)
        print(f"W&B run logged under {out_dir / 'wandb'} (publish: wandb sync {out_dir / 'wandb'}/offline-run-*)"
              if logger.enabled else "W&B report run could not be logged (see the warning above)")  # fmt: skip
    ok = int((report.jobs["status"] == "ok").sum())
    print(f"{len(report.jobs)} jobs ({ok} with a result, {len(report.failed)} without)")
    for path in [*report.files.values(), *report.plots.values()]:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
