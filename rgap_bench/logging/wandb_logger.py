"""Weights & Biases run logger, offline by default so no API key or network is ever needed."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgap_bench.logging.base import RunLogger, Scalar
from rgap_bench.options import build_options

log = logging.getLogger(__name__)

MODES = ("offline", "online", "disabled")


@dataclass
class WandbOptions:
    """The W&B logger's options: the single home of their defaults (the `logger=wandb` schema subclasses it)."""

    name: str = "wandb"
    project: str = "rgap_bench"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled; the WANDB_MODE environment variable wins
    group: str | None = None  # null: the sweep directory's name inside a multirun, no group for a single run
    job_type: str | None = None  # null: the attack's name (from the run's config)
    tags: list[str] = field(default_factory=list)  # each experiment preset adds its name


class WandbRunLogger(RunLogger):
    """One W&B run per benchmark run; files go under ``<run_dir>/wandb/``.

    ``WANDB_MODE`` in the environment wins over the configured mode, so a user can go online (or disable
    W&B) without editing configs. ``reinit="create_new"`` gives each Hydra multirun job in one process its own
    run; the jobs of one sweep share a group (the sweep directory's name, which `python -m rgap_bench.report
    --wandb` uses for its run too) and each job's type is its attack, so the dashboard compares like with like.
    A misconfiguration (an unknown mode, an online start that fails: no API key, no network, an unknown entity)
    costs a warning and the run is logged offline instead, to be synced later.
    """

    def __init__(self, options: WandbOptions | None = None, /, **overrides: Any) -> None:
        self.options = opts = build_options(WandbOptions, options, overrides)
        super().__init__(opts.name)
        self.project = opts.project
        self.entity = opts.entity
        self.mode = opts.mode
        self.group = opts.group
        self.job_type = opts.job_type
        self.tags = [str(t) for t in opts.tags]
        self._run: Any = None

    @property
    def resolved_mode(self) -> str:
        return os.environ.get("WANDB_MODE") or self.mode

    def _start(self, run_dir: Path, config: dict, run_name: str) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        mode = self.resolved_mode
        if mode not in MODES:
            origin = "WANDB_MODE" if os.environ.get("WANDB_MODE") else "logger.mode"
            log.warning("W&B mode %r (%s) is not one of %s; logging offline instead", mode, origin, ", ".join(MODES))
            mode = "offline"
        try:
            self._run = self._init(run_dir, config, run_name, mode)
        except Exception as exc:
            if mode != "online":
                raise
            log.warning(
                "W&B could not start online (%s: %s); logging offline instead, upload later with `wandb sync %s`",
                type(exc).__name__, " ".join(str(exc).split())[:200], run_dir / "wandb",
            )  # fmt: skip
            self._run = self._init(run_dir, config, run_name, "offline")

    def _init(self, run_dir: Path, config: dict, run_name: str, mode: str) -> Any:
        import wandb

        with _wandb_mode(mode):
            return wandb.init(
                dir=str(run_dir),
                project=self.project,
                entity=self.entity,
                group=self.group or sweep_group(),
                job_type=self.job_type or _attack_name(config),
                tags=self.tags,
                name=run_name,
                config=flatten_config(config),
                mode=mode,
                reinit="create_new",
                settings=wandb.Settings(silent=True, console="off"),
            )

    def _log_summary(self, metrics: dict[str, Scalar]) -> None:
        numeric = {
            k: v
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
        if numeric:
            self._run.log(numeric)
        self._run.summary.update(dict(metrics))

    def _log_image(self, key: str, path: Path, caption: str) -> None:
        import wandb

        self._run.log({key: wandb.Image(str(path), caption=caption or None)})

    def _log_table(self, key: str, rows: list[dict]) -> None:
        import wandb

        if not rows:
            return
        columns = list(dict.fromkeys(k for row in rows for k in row))
        data = [[_cell(row.get(c)) for c in columns] for row in rows]
        self._run.log({key: wandb.Table(columns=columns, data=data)})

    def _finish(self, exit_code: int) -> None:
        if self._run is not None:
            run, self._run = self._run, None
            run.finish(exit_code=exit_code)


def sweep_group() -> str | None:
    """The W&B group of a Hydra multirun job: its sweep directory's name (None outside a multirun)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return None
        return Path(HydraConfig.get().sweep.dir).name
    except Exception:  # tracking is never worth failing a job for
        return None


def flatten_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config as dotted keys (`model.name`, `defense.gaussian.sigma`): the dashboard's run table, filters
    and parallel-coordinates plots take one column per key, and a sweep's axes are named as they were overridden.
    Lists stay values (`model.layers`)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _attack_name(config: dict) -> str | None:
    attack = config.get("attack")
    return str(attack["name"]) if isinstance(attack, dict) and attack.get("name") else None


@contextmanager
def _wandb_mode(mode: str) -> Iterator[None]:
    """WANDB_MODE set to `mode` while W&B starts: wandb reads the variable itself and would refuse a bad one."""
    before = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = mode
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = before


def _cell(value: Any) -> Any:
    """W&B tables hold scalars; anything else is shown as text rather than rejected."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
