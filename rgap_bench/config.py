"""Structured config schemas.

Each config group option in ``conf/`` starts its defaults list with one of these schemas, so a misspelt key or a
value of the wrong type fails when Hydra composes the config, with Hydra's own message, before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from rgap_bench.attacks.rgap.options import RGAPOptions


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
class FedAvgClientConfig(FedSGDClientConfig):
    _target_: str = "rgap_bench.fl.fedavg.FedAvgClient"
    name: str = "fedavg"
    local_steps: int | None = 1  # S plain-SGD steps; null = local_epochs passes over the client's data
    local_epochs: int = 1  # E, used when local_steps is null
    lr: float = 0.1  # eta
    batch_size: int | None = None  # local mini-batch; null = all of the client's samples in one batch
    seed: int = 0  # shuffling of the local data
    precision: str = "32-true"  # Lightning precision of local training; "64-true" removes float32 rounding


@dataclass
class PretrainConfig:
    """Server state before the attacked round: `epochs: 0` attacks the freshly initialised model."""

    epochs: int = 0
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 16
    checkpoint: str | None = None  # a state_dict path: loaded if it exists, else written; null = <run dir>
    exclude_private: bool = True  # keep the attacked sample(s) out of the server's training data


@dataclass
class FLConfig:
    """Federation around the attacked client: how the data plugin's dataset is split among clients."""

    num_clients: int = 1
    partition: str = "iid"  # iid | dirichlet
    alpha: float = 0.5  # Dirichlet concentration over classes (small = each client holds few classes)
    client: int = 0  # the attacked client; with num_clients > 1 its private batch comes from its own shard


@dataclass
class RGAPConfig(RGAPOptions):
    _target_: str = "rgap_bench.attacks.rgap.RGAP"


@dataclass
class MatchingConfig:
    """Gradient-matching attacks (dlg, idlg, ig); each YAML sets the paper's defaults."""

    _target_: str = MISSING
    name: str = MISSING
    distance: str = "euclidean"  # euclidean (relative squared distance) | cosine
    optimizer: str = "lbfgs"  # lbfgs | adam
    lr: float = 1.0
    max_iterations: int = 1000  # budget in gradient evaluations, per restart and label hypothesis
    schedule: str = "none"  # none | step (lr x0.1 at 3/8, 5/8, 7/8 of the budget; adam only)
    tolerance: float = 1e-10  # early stop once the gradient distance is at or below this
    tv_weight: float = 0.0  # total-variation prior weight
    signed: bool = False  # adam on the sign of the input gradient
    restarts: int = 1  # random restarts; the best gradient match is kept
    box: bool = False  # project the inputs onto [0, 1] after every step
    labels: str = "optimise"  # when not shared: optimise (soft label, DLG) | infer (analytic, iDLG)
    init: str = "uniform"  # uniform [0, 1) | normal
    seed: int = 0  # the attack's own generator: same seed, same reconstruction
    dtype: str = "float32"  # float32 | float64
    progress: bool = True  # rich progress bar (only on a terminal)


@dataclass
class HGAPConfig:
    _target_: str = "rgap_bench.attacks.hgap.HGAP"
    name: str = "hgap"
    dtype: str = "float64"  # R-GAP's solve
    rank: str = "auto"  # R-GAP's rank measurement; a deficient layer triggers the matching stage
    rank_max_unknowns: int = 6000
    null_max_unknowns: int = 16000
    distance: str = "euclidean"
    optimizer: str = "lbfgs"
    lr: float = 1.0
    max_iterations: int = 1000
    schedule: str = "none"
    tolerance: float = 1e-10
    tv_weight: float = 0.0
    signed: bool = False
    box: bool = True
    random_restarts: int = 1  # extra matching runs from random inputs next to the one from R-GAP
    labels: str = "infer"
    seed: int = 0
    matching_dtype: str = "float32"
    progress: bool = True


@dataclass
class DefenseConfig:
    """One flat schema for every defence, so options selected as a list (`defense=[clipping,gaussian]`) merge.

    Each option sets its own parameters and adds `steps.<name>: <class>`; unset parameters stay None and a set
    parameter that no selected defence takes is refused by `rgap_bench.defenses.compose.build_defense`.
    """

    _target_: str = "rgap_bench.defenses.compose.build_defense"
    name: str = "none"
    steps: dict[str, str] = field(default_factory=dict)  # applied in this order: name -> defence class
    seed: int = 0  # noise seed (step i uses seed + i)
    sigma: float | None = None  # gaussian: noise std
    scale: float | None = None  # laplace: scale b (std sqrt(2) b)
    ratio: float | None = None  # pruning: fraction of smallest-magnitude entries zeroed per tensor
    bits: int | None = None  # quantization: 2^bits levels per tensor
    max_norm: float | None = None  # clipping: L2 norm bound of the whole update
    clip_norm: float | None = None  # dpsgd: per-example L2 clipping norm C
    noise_multiplier: float | None = None  # dpsgd: noise std / C
    delta: float | None = None  # dpsgd: delta of the reported (epsilon, delta)
    sample_rate: float | None = None  # dpsgd: null = batch size / local dataset size
    utility: bool = False  # also train with the defence for a few epochs and report test accuracy
    utility_epochs: int = 3
    utility_lr: float = 0.05
    utility_batch_size: int = 8
    utility_test_fraction: float = 0.2  # held-out share of the data plugin's dataset


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
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    fl: FLConfig = field(default_factory=FLConfig)
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
    ("schema/client", "fedavg"): FedAvgClientConfig,
    ("schema/pretrain", "pretrain"): PretrainConfig,
    ("schema/fl", "fl"): FLConfig,
    ("schema/attack", "rgap"): RGAPConfig,
    ("schema/attack", "dlg"): MatchingConfig,
    ("schema/attack", "idlg"): MatchingConfig,
    ("schema/attack", "ig"): MatchingConfig,
    ("schema/attack", "hgap"): HGAPConfig,
    ("schema/defense", "defense"): DefenseConfig,
    ("schema/logger", "wandb"): WandbLoggerConfig,
    ("schema/logger", "none"): NoLoggerConfig,
}


def register_schemas() -> None:
    """Put every schema into Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        cs.store(group=group, name=name, node=node)
