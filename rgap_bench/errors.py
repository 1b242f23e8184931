"""Errors that carry a message a user can act on (what happened, and what to do)."""


class RGapBenchError(Exception):
    """Base class: the entry point prints these without a traceback."""


class UnsupportedModelError(RGapBenchError, ValueError):
    """An attack met a layer, activation or loss it cannot handle."""


class InvalidUpdateError(RGapBenchError, ValueError):
    """The shared update is unusable (NaN/Inf, missing tensors, wrong shapes)."""


class ConfigError(RGapBenchError, ValueError):
    """A configuration value is inconsistent in a way the schema cannot express."""


def root_cause(exc: BaseException) -> BaseException:
    """Hydra wraps errors raised while instantiating a plugin; the user needs the original message."""
    from hydra.errors import InstantiationException  # only the runner's layers call this; keep this module bare

    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc
