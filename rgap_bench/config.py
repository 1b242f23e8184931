"""Structured config schemas.

Each config group option in ``conf/`` starts its defaults list with one of these schemas, so a misspelt key or a
value of the wrong type fails when Hydra composes the config, with Hydra's own message, before any work starts.
A plugin's schema subclasses the plugin's options dataclass and adds only ``_target_``: the defaults live next to
the plugin (`rgap_bench.options`), the YAML option carries only what differs.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from rgap_bench.attacks.dlg import DLGOptions
from rgap_bench.attacks.hgap import HGAPOptions
from rgap_bench.attacks.idlg import IDLGOptions
from rgap_bench.attacks.ig import IGOptions
from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.data.cifar10 import CIFAR10Options
from rgap_bench.data.digits import DigitsOptions
from rgap_bench.data.mnist import MNISTOptions
from rgap_bench.data.photos import PhotosOptions
from rgap_bench.defenses.base import Defense
from rgap_bench.defenses.clipping import Clipping
from rgap_bench.defenses.compose import DefenseSettings
from rgap_bench.defenses.dpsgd import DPSGD
from rgap_bench.defenses.gaussian import GaussianNoise
from rgap_bench.defenses.laplace import LaplaceNoise
from rgap_bench.defenses.pruning import Pruning
from rgap_bench.defenses.quantization import Quantization
from rgap_bench.fl.client import FedSGDOptions
from rgap_bench.fl.data import FLOptions
from rgap_bench.fl.fedavg import FedAvgOptions
from rgap_bench.fl.server import PretrainOptions
from rgap_bench.logging.wandb_logger import WandbOptions
from rgap_bench.models.convnet import ConvNetOptions
from rgap_bench.models.layers import LayerSpec
from rgap_bench.models.paper import CNN6dOptions, FCN3Options, PaperModelOptions
from rgap_bench.resolvers import register_resolvers

# Every defence (conf/defense/<default_name>.yaml): its options become the schema of defense.<default_name>.
DEFENSES: tuple[type[Defense], ...] = (Clipping, DPSGD, GaussianNoise, LaplaceNoise, Pruning, Quantization)


# One layer of a `model=convnet` list: LayerSpec's fields and defaults (`kind` and `out` have none: required).
LayerSpecConfig = make_dataclass(
    "LayerSpecConfig",
    [
        (f.name, hint, dataclasses.field(default=MISSING if f.default is dataclasses.MISSING else f.default))
        for f, hint in zip(dataclasses.fields(LayerSpec), typing.get_type_hints(LayerSpec).values(), strict=True)
    ],
)


@dataclass
class CNN6Config(PaperModelOptions):
    _target_: str = "rgap_bench.models.cnn6"


@dataclass
class CNN6dConfig(CNN6dOptions):
    _target_: str = "rgap_bench.models.cnn6d"


@dataclass
class FCN3Config(FCN3Options):
    _target_: str = "rgap_bench.models.fcn3"


@dataclass
class ConvNetConfig(ConvNetOptions):
    _target_: str = "rgap_bench.models.convnet.build_convnet"
    layers: list[LayerSpecConfig] = field(default_factory=list)  # typed, so a misspelt layer key fails at compose


@dataclass
class PhotosConfig(PhotosOptions):
    _target_: str = "rgap_bench.data.photos.EmbeddedPhotos"


@dataclass
class DigitsConfig(DigitsOptions):
    _target_: str = "rgap_bench.data.digits.EmbeddedDigits"


@dataclass
class MNISTConfig(MNISTOptions):
    _target_: str = "rgap_bench.data.mnist.MNISTFolder"


@dataclass
class CIFAR10Config(CIFAR10Options):
    _target_: str = "rgap_bench.data.cifar10.CIFAR10Folder"


@dataclass
class FedSGDClientConfig(FedSGDOptions):
    _target_: str = "rgap_bench.fl.client.FedSGDClient"


@dataclass
class FedAvgClientConfig(FedAvgOptions):
    _target_: str = "rgap_bench.fl.fedavg.FedAvgClient"


@dataclass
class PretrainConfig(PretrainOptions):
    """`pretrain.*`: the server's pretraining options (validated where they are used, `rgap_bench.fl.server`)."""


@dataclass
class FLConfig(FLOptions):
    """`fl.*`: the federation's options (validated where they are used, `rgap_bench.fl.round`)."""


@dataclass
class RGAPConfig(RGAPOptions):
    _target_: str = "rgap_bench.attacks.rgap.RGAP"


@dataclass
class DLGConfig(DLGOptions):
    _target_: str = "rgap_bench.attacks.dlg.DLG"


@dataclass
class IDLGConfig(IDLGOptions):
    _target_: str = "rgap_bench.attacks.idlg.IDLG"


@dataclass
class IGConfig(IGOptions):
    _target_: str = "rgap_bench.attacks.ig.InvertingGradients"


@dataclass
class HGAPConfig(HGAPOptions):
    _target_: str = "rgap_bench.attacks.hgap.HGAP"


@dataclass
class DefenseConfig(DefenseSettings):
    """The run-level defence node; each selected defence adds its own node `defense.<name>` (see `defense_schemas`).

    Stored with struct mode off so those nodes can join it in the selection order; a key that is neither a setting
    here nor a selected defence is refused by `rgap_bench.defenses.compose.build_defense`.
    """

    _target_: str = "rgap_bench.defenses.compose.build_defense"
    _recursive_: bool = False  # the builder builds each defence itself, with the pipeline's seeds


def defense_schemas() -> dict[str, type]:
    """`schema/defense/<name>`: a defence's options dataclass plus its `_target_`, the node its YAML option adds."""
    return {
        cls.default_name: make_dataclass(
            f"{cls.__name__}Config",
            [("_target_", str, field(default=f"{cls.__module__}.{cls.__qualname__}"))],
            bases=(cls.Options,),
        )
        for cls in DEFENSES
    }


@dataclass
class WandbLoggerConfig(WandbOptions):
    _target_: str = "rgap_bench.logging.wandb_logger.WandbRunLogger"


@dataclass
class NoLoggerConfig:
    _target_: str = "rgap_bench.logging.base.NullLogger"
    name: str = "none"
    tags: list[str] = field(default_factory=list)  # unused: lets a preset's logger.tags compose with logger=none


@dataclass
class RunConfig:
    model: Any = MISSING
    data: Any = MISSING
    client: Any = MISSING
    attack: Any = MISSING
    defense: Any = MISSING
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    logger: Any = MISSING
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | auto
    save_images: bool = True
    print_summary: bool = True
    resume: bool = False  # skip a job whose metrics.json is already complete (rgap_bench.resume)


# (group, option) -> schema. Stored under ``schema/<group>`` so they never show up as selectable options;
# each YAML option pulls its schema in with ``- /schema/<group>/<option>@_here_``.
SCHEMAS: dict[tuple[str, str], Any] = {
    ("schema", "run"): RunConfig,
    ("schema/model", "cnn6"): CNN6Config,
    ("schema/model", "cnn6d"): CNN6dConfig,
    ("schema/model", "fcn3"): FCN3Config,
    ("schema/model", "convnet"): ConvNetConfig,
    ("schema/data", "photos"): PhotosConfig,
    ("schema/data", "digits"): DigitsConfig,
    ("schema/data", "mnist"): MNISTConfig,
    ("schema/data", "cifar10"): CIFAR10Config,
    ("schema/client", "fedsgd"): FedSGDClientConfig,
    ("schema/client", "fedavg"): FedAvgClientConfig,
    ("schema/pretrain", "pretrain"): PretrainConfig,
    ("schema/fl", "fl"): FLConfig,
    ("schema/attack", "rgap"): RGAPConfig,
    ("schema/attack", "dlg"): DLGConfig,
    ("schema/attack", "idlg"): IDLGConfig,
    ("schema/attack", "ig"): IGConfig,
    ("schema/attack", "hgap"): HGAPConfig,
    # struct off: the selected defences add their nodes to it (DefenseConfig's docstring)
    ("schema/defense", "defense"): OmegaConf.structured(DefenseConfig, flags={"struct": False}),
    **{("schema/defense", name): schema for name, schema in defense_schemas().items()},
    ("schema/logger", "wandb"): WandbLoggerConfig,
    ("schema/logger", "none"): NoLoggerConfig,
}


def register_schemas() -> None:
    """Put every schema into Hydra's ConfigStore, and the run directories' resolvers into OmegaConf (idempotent)."""
    register_resolvers()
    cs = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        cs.store(group=group, name=name, node=node)
