"""One home per default: every plugin's options are one dataclass next to the plugin, and nothing else repeats them.

The Hydra schema of a config group option subclasses the plugin's options dataclass (adding only `_target_`), the
YAML option carries what differs from those defaults, and the plugin's constructor takes an options object and/or
keyword overrides (which is what `hydra.utils.instantiate` passes). `build_options` is that constructor's one line:
it merges, converts nested config nodes into their own options dataclasses, and turns a misspelt key into a
`ConfigError` that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from rgap_bench.errors import ConfigError

T = TypeVar("T")


def _plain(value: Any) -> Any:
    """Config nodes (what Hydra passes for nested values) as plain Python containers."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _nested_options(hint: Any) -> type | None:
    """The options dataclass a field holds (`X` or `X | None`), or None."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg) and isinstance(arg, type):
            return arg
    return None


def build_options(cls: type[T], options: T | Mapping[str, Any] | None = None, overrides: Mapping[str, Any] = ()) -> T:
    """`cls` from defaults, then `options` (an instance or a mapping), then keyword `overrides`."""
    names = [f.name for f in dataclasses.fields(cls)]
    if options is None:
        values: dict[str, Any] = {}
    elif isinstance(options, cls):
        values = {name: getattr(options, name) for name in names}
    elif isinstance(options, Mapping):
        values = dict(_plain(options))
    else:
        raise ConfigError(f"{cls.__name__}: expected options or a mapping, got {type(options).__name__}")
    values.update(dict(overrides))
    unknown = sorted(set(values) - set(names) - {"_target_"})
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown option(s) {unknown}; valid options are {', '.join(names)}")
    values.pop("_target_", None)
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        value = _plain(value)
        nested = _nested_options(hints[name])
        if nested is not None and isinstance(value, Mapping):
            value = build_options(nested, value)
        values[name] = value
    return cls(**values)
