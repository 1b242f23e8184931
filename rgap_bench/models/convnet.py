"""`model=convnet`: an architecture described as a list of layers in YAML, no code needed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rgap_bench.errors import ConfigError
from rgap_bench.models.layers import LayerSpec, SequentialNet, build_from_specs

_SPEC_FIELDS = set(LayerSpec.__dataclass_fields__)


def build_convnet(
    layers: Sequence[Mapping[str, Any]], name: str = "convnet", in_channels: int = 3, image_size: int = 32
) -> SequentialNet:
    specs = []
    for i, layer in enumerate(layers):
        unknown = set(layer) - _SPEC_FIELDS
        if unknown:
            raise ConfigError(
                f"layer {i} of {name!r} has unknown keys {sorted(unknown)}; allowed: {sorted(_SPEC_FIELDS)}"
            )
        specs.append(LayerSpec(**dict(layer)))
    return build_from_specs(name, (in_channels, image_size, image_size), specs)
