"""The answer of a sweep: `python -m rgap_bench.report <sweep dir>` reads every job's files and writes `summary.csv`,
`report.md`, plots and a self-contained `report.html` next to them (and, with --wandb, one W&B run of job type
`report` in the sweep's group)."""

from rgap_bench.report.loading import load_sweep, swept_keys
from rgap_bench.report.tables import failures, grouped
from rgap_bench.report.writer import SweepReport, write_report

__all__ = ["SweepReport", "failures", "grouped", "load_sweep", "swept_keys", "write_report"]
