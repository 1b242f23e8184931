"""`report --wandb`: the aggregated tables and plots as one more W&B run, job type `report`, in the sweep's group.

The group is the sweep directory's name, as each job's (`rgap_bench.logging.wandb_logger.sweep_group`), and project
and tags are taken from the jobs' own logger config, so the dashboard shows the answer next to the jobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rgap_bench.logging.wandb_logger import WandbRunLogger
from rgap_bench.report.loading import job_dirs
from rgap_bench.report.writer import SweepReport

JOB_TYPE = "report"


def _jobs_logger_config(sweep_dir: Path) -> dict[str, Any]:
    for job in job_dirs(sweep_dir):
        path = job / ".hydra" / "config.yaml"
        if path.is_file():
            logger = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("logger") or {}
            if logger.get("_target_", "").endswith("WandbRunLogger"):
                return logger
    return {}


def log_report(report: SweepReport, out_dir: Path, mode: str = "offline") -> WandbRunLogger:
    """Log the report as a W&B run under `out_dir/wandb/`; returns the (finished) logger, `enabled` False if W&B
    could not start (the report files are written either way)."""
    jobs_logger = _jobs_logger_config(report.sweep_dir)
    group = report.sweep_dir.resolve().name
    logger = WandbRunLogger(
        project=jobs_logger.get("project", "rgap_bench"),
        entity=jobs_logger.get("entity"),
        mode=jobs_logger.get("mode", mode),
        group=group,
        job_type=JOB_TYPE,
        tags=[*jobs_logger.get("tags", []), JOB_TYPE],
    )
    config = {"sweep_dir": str(report.sweep_dir), "jobs": len(report.jobs)}
    logger.start(Path(out_dir), config, f"report_{group}")
    logger.log_table("summary", report.jobs.to_dict(orient="records"))
    logger.log_table("grouped", report.table.to_dict(orient="records"))
    if not report.failed.empty:
        logger.log_table("failed", report.failed.to_dict(orient="records"))
    for name, path in report.plots.items():
        logger.log_image(name, path)
    ok = int((report.jobs["status"] == "ok").sum())
    logger.log_summary({"report/jobs": len(report.jobs), "report/ok": ok, "report/failed": len(report.jobs) - ok})
    logger.finish(0)
    return logger
