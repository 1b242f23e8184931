"""`model=convnet`: an architecture described as a list of layers in YAML, no code needed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rgap_bench.errors import ConfigError
from rgap_bench.models.init import check_init, initialize
from rgap_bench.models.layers import LayerSpec, SequentialNet, build_from_specs
from rgap_bench.options import build_options

_SPEC_FIELDS = set(LayerSpec.__dataclass_fields__)


@dataclass
class ConvNetOptions:
    """The convnet builder's options (the `model=convnet` schema subclasses it); each layer's keys and defaults are
    `LayerSpec`'s."""

    name: str = "convnet"
    in_channels: int = 3
    image_size: int = 32
    layers: list[Mapping[str, Any]] = field(default_factory=list)
    init: str = "default"  # default | normal: as the paper nets' (rgap_bench.models.init)
    init_std: float = 0.01

    def __post_init__(self) -> None:
        check_init(self.init, self.init_std)


def build_convnet(layers: Sequence[Mapping[str, Any]] | None = None, /, **overrides: Any) -> SequentialNet:
    """`build_convnet([{"kind": "conv", "out": 8}, ...], in_channels=1, image_size=8)`, or Hydra's keywords."""
    if layers is not None:
        overrides = {**overrides, "layers": layers}
    opts = build_options(ConvNetOptions, None, overrides)
    specs = []
    for i, layer in enumerate(opts.layers):
        unknown = set(layer) - _SPEC_FIELDS
        if unknown:
            raise ConfigError(
                f"layer {i} of {opts.name!r} has unknown keys {sorted(unknown)}; allowed: {sorted(_SPEC_FIELDS)}"
            )
        specs.append(LayerSpec(**dict(layer)))
    net = build_from_specs(opts.name, (opts.in_channels, opts.image_size, opts.image_size), specs)
    return initialize(net, opts.init, opts.init_std)
