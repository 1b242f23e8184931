"""Errors that carry a message a user can act on (what happened, and what to do)."""


class RGapBenchError(Exception):
    """Base class: the entry point prints these without a traceback."""


class UnsupportedModelError(RGapBenchError, ValueError):
    """An attack met a layer, activation or loss it cannot handle."""


class InvalidUpdateError(RGapBenchError, ValueError):
    """The shared update is unusable (NaN/Inf, missing tensors, wrong shapes)."""


class ConfigError(RGapBenchError, ValueError):
    """A configuration value is inconsistent in a way the schema cannot express."""


class DatasetNotFoundError(RGapBenchError, FileNotFoundError):
    """A disk dataset's files are not where the config points; the message says what to put where."""


class DatasetFormatError(RGapBenchError, ValueError):
    """A disk dataset's file is there but unreadable (truncated, corrupt, or another format)."""


class CheckpointError(ConfigError):
    """A checkpoint that is missing, unreadable, or holds weights of another architecture."""


def root_cause(exc: BaseException) -> BaseException:
    """Hydra wraps errors raised while instantiating a plugin; the user needs the original message."""
    from hydra.errors import InstantiationException  # only the runner's layers call this; keep this module bare

    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc
