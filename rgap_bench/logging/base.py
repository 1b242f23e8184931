"""Run logger interface whose failures never fail a run.

A benchmark run may spend minutes on an attack; losing its result because a tracking backend is misconfigured
or offline would be worse than losing the tracking. The public methods therefore call the subclass hooks
(``_start``, ``_log_summary``, ...) inside a guard that turns any exception into one warning per method, and a
failed ``start`` switches the logger off for the rest of the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Scalar = float | int | str


class RunLogger:
    """Base class: subclasses override the underscore hooks, callers use the guarded public methods."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.enabled = True
        self._warned: set[str] = set()

    def _guard(self, method: str, hook: Callable[..., None], *args: Any) -> None:
        if not self.enabled:
            return
        try:
            hook(*args)
        except Exception as exc:
            if method not in self._warned:
                self._warned.add(method)
                log.warning("logger %r: %s failed (%s: %s)", self.name, method, type(exc).__name__, exc)
            if method == "start":
                self.enabled = False
                log.warning("logger %r disabled for the rest of this run", self.name)

    def start(self, run_dir: Path, config: dict, run_name: str) -> None:
        self._guard("start", self._start, Path(run_dir), config, run_name)

    def log_summary(self, metrics: dict[str, Scalar]) -> None:
        """Record final, flat, namespaced values such as ``recon/psnr``."""
        self._guard("log_summary", self._log_summary, metrics)

    def log_image(self, key: str, path: Path, caption: str = "") -> None:
        self._guard("log_image", self._log_image, key, Path(path), caption)

    def log_table(self, key: str, rows: list[dict]) -> None:
        self._guard("log_table", self._log_table, key, rows)

    def finish(self, exit_code: int = 0) -> None:
        self._guard("finish", self._finish, exit_code)

    def _start(self, run_dir: Path, config: dict, run_name: str) -> None:
        """Hook; the default does nothing."""

    def _log_summary(self, metrics: dict[str, Scalar]) -> None:
        """Hook; the default does nothing."""

    def _log_image(self, key: str, path: Path, caption: str) -> None:
        """Hook; the default does nothing."""

    def _log_table(self, key: str, rows: list[dict]) -> None:
        """Hook; the default does nothing."""

    def _finish(self, exit_code: int) -> None:
        """Hook; the default does nothing."""


class NullLogger(RunLogger):
    """Logger for ``logger=none``: the run still writes its files, nothing is tracked."""

    def __init__(self, name: str = "none", tags: list[str] | None = None) -> None:
        super().__init__(name)  # tags: a preset's, accepted so `experiment=... logger=none` composes; nothing to tag
