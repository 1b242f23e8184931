"""Records that cross module boundaries.

The split between these types is the threat model: a client turns a `PrivateBatch` into a `ClientUpdate`
(what travels over the wire plus public metadata); an attack sees only the global model and the
`ClientUpdate` and returns a `Reconstruction`; only evaluation sees both the private batch and the
reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class PrivateBatch:
    """Samples held by a client. Attacks never receive this object."""

    inputs: Tensor  # (B, C, H, W), float, values in [0, 1]
    labels: Tensor  # (B,) int64 class ids of the source dataset
    binary_labels: Tensor  # (B,) int64 in {0, 1}: the dataset's two-class mapping (paper: machine/animal)
    indices: Tensor  # (B,) int64 positions in the source dataset
    dataset: str

    @property
    def batch_size(self) -> int:
        return int(self.inputs.shape[0])


@dataclass(frozen=True)
class UpdateMetadata:
    """Public facts about an update that a server knows or is told."""

    kind: str  # "gradient" (FedSGD) or "weight_delta" (FedAvg)
    batch_size: int
    loss: str  # e.g. "binary_logistic"
    reduction: str  # how per-sample losses were combined: "mean" or "sum"
    input_shape: tuple[int, ...]  # (C, H, W) of one sample
    labels: Tensor | None = None  # shared only under the paper's "label known" threat model
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientUpdate:
    """What a client sends: one tensor per named model parameter, plus metadata."""

    tensors: dict[str, Tensor]
    metadata: UpdateMetadata


@dataclass
class LayerReport:
    """Per-layer record of one recursive solve (all counts are numbers of scalar equations/unknowns)."""

    index: int
    layer: str
    unknowns: int
    unknowns_padded: int
    gradient_constraints: int
    weight_constraints: int
    padding_constraints: int
    rank: int | None = None
    rank_deficiency: int | None = None
    sigma_min_rel: float | None = None  # smallest / largest singular value of the scaled system
    rank_method: str = ""  # how the rank was established when not by `solver` (e.g. the gradient rows' bound)
    residual_rel: float | None = None  # ||A x - b|| / ||b|| of the scaled system
    solver: str = ""
    iterations: int | None = None  # iterative solvers only
    time_s: float = 0.0
    note: str = ""
    # joint null-space solve only: whether the LeakyReLU pattern of the deficient layer's input settled with a
    # solution that fits every equation of both layers (residual < 1e-3; None for every other solve)
    pattern_settled: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Reconstruction:
    """What an attack returns: inputs in the model's input space, plus diagnostics.

    Frozen: an attack that refines another's answer builds a new record (`dataclasses.replace`). The typed fields
    are what attacks choose between candidates on; `info` is free-form detail for `metrics.json` only and never
    steers control flow.
    """

    inputs: Tensor  # (B, C, H, W)
    labels: Tensor | None = None
    combined: bool = False  # one image standing for a whole batch (scored against the batch mean)
    layers: list[LayerReport] = field(default_factory=list)
    residual_rel: float | None = None  # closed-form attacks: mean relative residual of the equations solved
    range_violation: float | None = None  # mean distance of the inputs outside the image range [0, 1]
    gradient_distance: float | None = None  # matching attacks: distance of the reconstruction's gradient
    info: dict[str, Any] = field(default_factory=dict)
