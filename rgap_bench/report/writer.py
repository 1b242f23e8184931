"""Write a sweep's report files: `summary.csv`, `report.md`, `plots/*.png` and `report.html`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rgap_bench.logging import atomic_write
from rgap_bench.report.html import render
from rgap_bench.report.loading import load_sweep, swept_keys
from rgap_bench.report.plots import save_plots
from rgap_bench.report.tables import failures, group_keys, grouped, markdown


@dataclass
class SweepReport:
    """What the report found and where it wrote it."""

    sweep_dir: Path
    jobs: pd.DataFrame  # one row per job (summary.csv)
    table: pd.DataFrame  # mean ± std per setting (report.md, report.html)
    failed: pd.DataFrame  # jobs without a result, with the reason
    plots: dict[str, Path]
    files: dict[str, Path]


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _markdown_report(title: str, note: str, table: pd.DataFrame, failed: pd.DataFrame, plots: dict[str, Path]) -> str:
    parts = [f"# {title}\n", f"{note}\n", markdown(table)]
    if not failed.empty:
        parts += [f"\n## Jobs without a result ({len(failed)})\n", markdown(failed)]
    parts += [f"\n![{name}](plots/{path.name})\n" for name, path in plots.items()]
    return "\n".join(parts)


def write_report(sweep_dir: Path, out_dir: Path | None = None) -> SweepReport:
    """Read every job of `sweep_dir` and write the report files into `out_dir` (default: the sweep directory)."""
    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir
    jobs = load_sweep(sweep_dir)
    table, failed = grouped(jobs), failures(jobs)
    plots = save_plots(jobs, out_dir / "plots")
    ok = int((jobs["status"] == "ok").sum())
    title = f"Sweep {sweep_dir.resolve().name}"
    note = (
        f"{len(jobs)} jobs, {ok} with a result; swept: {', '.join(swept_keys(jobs)) or 'nothing'}; "
        f"rows: {', '.join(group_keys(jobs))}; mean ± std over the jobs of a row (images, seeds)."
    )
    files = {"summary": out_dir / "summary.csv", "markdown": out_dir / "report.md", "html": out_dir / "report.html"}
    with atomic_write(files["summary"]) as tmp:
        jobs.to_csv(tmp, index=False)
    _write_text(files["markdown"], _markdown_report(title, note, table, failed, plots))
    _write_text(files["html"], render(title, table, failed, plots, note))
    return SweepReport(sweep_dir, jobs, table, failed, plots, files)
