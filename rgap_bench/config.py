"""Structured config schemas.

Each config group option in ``conf/`` starts its defaults list with one of these schemas, so a misspelt key or a
value of the wrong type fails when Hydra composes the config, with Hydra's own message, before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class LayerSpecConfig:
    """One layer of a ``model=convnet`` description: a conv or linear op followed by an activation."""

    kind: str = "conv"  # conv | linear
    out: int = MISSING  # output channels (conv) or features (linear)
    kernel: int = 3
    stride: int = 1
    padding: int = 0
    activation: str = "leaky_relu"  # leaky_relu | identity | relu | tanh | sigmoid
    negative_slope: float = 0.2
    bias: bool = False


@dataclass
class PaperModelConfig:
    _target_: str = MISSING
    name: str = MISSING
    in_channels: int = 3
    image_size: int = 32
    negative_slope: float = 0.2


@dataclass
class ConvNetConfig:
    _target_: str = "rgap_bench.models.convnet.build_convnet"
    name: str = "convnet"
    in_channels: int = 3
    image_size: int = 32
    layers: list[LayerSpecConfig] = field(default_factory=list)


@dataclass
class DataConfig:
    _target_: str = MISSING
    name: str = MISSING
    root: str | None = None  # directory holding a torchvision-format dataset (disk datasets only)
    train: bool = True  # which split of a disk dataset
    image_size: int = 32
    channels: int = 3
    batch_size: int = 1
    index: int | None = 0  # first sample of the private batch; null draws the batch at random from the seed


@dataclass
class FedSGDClientConfig:
    _target_: str = "rgap_bench.fl.client.FedSGDClient"
    name: str = "fedsgd"
    loss: str = "binary_logistic"
    reduction: str = "mean"
    label_policy: str = "flip_prediction"  # flip_prediction | true
    share_labels: bool = True  # the paper's threat model: the attacker knows the label


@dataclass
class RGAPConfig:
    _target_: str = "rgap_bench.attacks.rgap.RGAP"
    name: str = "rgap"
    dtype: str = "float64"  # float64 | float32
    solver: str = "auto"  # auto | dense | sparse
    rank: str = "auto"  # auto | exact | off: numerical rank of each layer's system
    rank_max_unknowns: int = 6000  # auto: exact rank only up to this many unknowns
    refine_steps: int = 2  # iterative-refinement steps after the normal-equation solve
    scale_rows: bool = True  # normalise each constraint row; without it gradient rows drown
    rcond: float = 1e-10  # relative eigenvalue cut-off for rank-deficient normal equations


@dataclass
class DefenseConfig:
    _target_: str = "rgap_bench.defenses.identity.NoDefense"
    name: str = "none"


@dataclass
class WandbLoggerConfig:
    _target_: str = "rgap_bench.logging.wandb_logger.WandbRunLogger"
    name: str = "wandb"
    project: str = "rgap_bench"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled; the WANDB_MODE environment variable wins
    group: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class NoLoggerConfig:
    _target_: str = "rgap_bench.logging.base.NullLogger"
    name: str = "none"


@dataclass
class RunConfig:
    model: Any = MISSING
    data: DataConfig = MISSING
    client: Any = MISSING
    attack: Any = MISSING
    defense: Any = MISSING
    logger: Any = MISSING
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | auto
    save_images: bool = True
    print_summary: bool = True


# (group, option) -> schema. Stored under ``schema/<group>`` so they never show up as selectable options;
# each YAML option pulls its schema in with ``- /schema/<group>/<option>@_here_``.
SCHEMAS: dict[tuple[str, str], Any] = {
    ("schema", "run"): RunConfig,
    ("schema/model", "paper"): PaperModelConfig,
    ("schema/model", "convnet"): ConvNetConfig,
    ("schema/data", "data"): DataConfig,
    ("schema/client", "fedsgd"): FedSGDClientConfig,
    ("schema/attack", "rgap"): RGAPConfig,
    ("schema/defense", "defense"): DefenseConfig,
    ("schema/logger", "wandb"): WandbLoggerConfig,
    ("schema/logger", "none"): NoLoggerConfig,
}


def register_schemas() -> None:
    """Put every schema into Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        cs.store(group=group, name=name, node=node)
