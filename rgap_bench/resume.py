"""Resuming a sweep: which jobs already hold a final result, so `resume=true` reruns only what is missing.

A job is complete when its `metrics.json` (written atomically, so never half a file) has a terminal status *and*
its `job.json` says it was computed from the same config. Terminal means `ok`, or `failed` with attack status
`unsupported`: the attack refused the model or update, which a rerun would only repeat. Any other failure (a missing
dataset, out of memory, a bug since fixed) and `interrupted` are rerun, because a rerun may succeed.

The config digest guards against a sweep directory reused with other settings: a job whose config changed since its
result was written is rerun, not silently kept. `resume` and `logger` are left out of the digest, since neither
changes a result.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rgap_bench.logging import write_json
from rgap_bench.logging.files import read_json_object

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
METRICS_FILE = "metrics.json"
STALE_FILES = (METRICS_FILE, "client.json")  # a rerun must not report what an earlier run left behind
NOT_IN_DIGEST = ("resume", "logger")


def config_digest(cfg: DictConfig) -> str:
    """SHA-256 of the job's resolved config (without `resume` and `logger`), stable across processes."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    kept = {k: v for k, v in container.items() if k not in NOT_IN_DIGEST}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def is_terminal(metrics: dict[str, Any]) -> bool:
    """A result a rerun would not change: ok, or an attack that does not support this model or update."""
    status = metrics.get("status")
    return status == "ok" or (status == "failed" and metrics.get("attack_status") == "unsupported")


def completed_result(run_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The job's `metrics.json` when it is complete for this very config, else None (the job must run)."""
    metrics = read_json_object(run_dir / METRICS_FILE)
    if metrics is None or not is_terminal(metrics):
        return None
    job = read_json_object(run_dir / JOB_FILE) or {}
    if job.get("config_digest") != config_digest(cfg):
        log.warning("resume: %s holds a result of another config; rerunning the job", run_dir)
        return None
    return metrics


def start_job(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> None:
    """Record which config this job computes (for a later resume) and drop an earlier run's results."""
    for name in STALE_FILES:
        (run_dir / name).unlink(missing_ok=True)
    write_json(run_dir / JOB_FILE, {"config_digest": config_digest(cfg), "overrides": overrides})
