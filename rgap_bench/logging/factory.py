"""The run logger a config asks for, or none: tracking must never stop a run (or a rank analysis) from starting."""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate

from rgap_bench.errors import root_cause
from rgap_bench.logging.base import NullLogger, RunLogger

log = logging.getLogger(__name__)


def make_logger(cfg: Any) -> RunLogger:
    """Instantiate `cfg.logger`; on any failure warn once and return a `NullLogger`."""
    try:
        return instantiate(cfg.logger)
    except Exception as exc:
        log.warning("logger could not be built (%s); continuing without tracking", root_cause(exc))
        return NullLogger()
