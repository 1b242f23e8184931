"""Records that cross module boundaries.

The split between these types is the threat model: a client turns a `PrivateBatch` into a `ClientUpdate`
(what travels over the wire plus public metadata); an attack sees only the global model and the
`ClientUpdate` and returns a `Reconstruction`; only evaluation sees both the private batch and the
reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor, nn

from rgap_bench.losses import Loss

# How far a result can be trusted, per layer (`layers.json`) and per run (`metrics.json` `attack_status`): exact
# (every equation solved and the solution unique, or a gradient matched to the attack's tolerance), approximate
# (a result, with the reason it may be wrong), failed (no usable result), unsupported (the attack cannot handle it).
# Ordered from best to worst: a run is as good as its worst layer.
Status = Literal["exact", "approximate", "failed", "unsupported"]
STATUSES: tuple[Status, ...] = ("exact", "approximate", "unsupported", "failed")
UNASSESSED = "the attack did not assess its result"


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
    """Public facts about an update that a server knows or is told.

    FedAvg's local-training fields are typed because the attacker reads them (`fl.updates.as_gradient`); they are
    None for a FedSGD gradient.
    """

    kind: str  # "gradient" (FedSGD) or "weight_delta" (FedAvg)
    batch_size: int
    loss: Loss  # the client loss, with its reduction
    input_shape: tuple[int, ...]  # (C, H, W) of one sample
    labels: Tensor | None = None  # shared only under the paper's "label known" threat model
    client_loss: float | None = None  # the loss value the client saw (FedAvg: at its first local step)
    local_steps: int | None = None  # FedAvg: SGD steps taken
    local_epochs: int | None = None  # FedAvg: passes over the client's data (a started pass counts)
    lr: float | None = None  # FedAvg: local learning rate
    local_batch_size: int | None = None  # FedAvg: local mini-batch size
    training: bool | None = None  # the model's mode (dropout, batch-norm) when the client computed the update
    defenses: tuple[str, ...] = ()  # the defences applied, in order
    converted_from: str | None = None  # "weight_delta" when an attacker read a FedAvg delta as a gradient
    # std of the additive noise per coordinate that a noise defence announced (public, e.g. a DP protocol's
    # sigma): what R-GAP's discrepancy principle uses; None when no noise was announced
    noise_sigma: float | None = None

    @property
    def exact_conversion(self) -> bool | None:
        """Whether a converted update is exactly the gradient (one local step); None when not converted."""
        return None if self.converted_from is None else self.local_steps == 1

    def record(self) -> dict[str, Any]:
        """The public metadata as `client.json` and `metrics.json` carry it (`update`): only what was set."""
        out: dict[str, Any] = {"kind": self.kind, "batch_size": self.batch_size}
        if self.lr is not None:  # a FedAvg update: its local-training facts
            out.update(
                local_steps=self.local_steps,
                local_epochs=self.local_epochs,
                lr=self.lr,
                local_batch_size=self.local_batch_size,
            )
        out["client_loss"] = self.client_loss
        if self.defenses:
            out["defenses"] = list(self.defenses)
        if self.noise_sigma is not None:
            out["noise_sigma"] = self.noise_sigma
        return out


@dataclass(frozen=True)
class ClientUpdate:
    """What a client sends: one tensor per named model parameter, plus metadata."""

    tensors: dict[str, Tensor]
    metadata: UpdateMetadata


@dataclass(frozen=True)
class ClientContext:
    """The client-side facts a defence may need: the model the update was computed on, and the private data.

    Built by the client side (`fl`) and handed to defences, never to attacks; it lives here so that defences need
    nothing from `fl`.
    """

    model: nn.Module
    inputs: Tensor
    targets: Tensor
    loss: Loss
    dataset_size: int | None = None  # size of the client's local dataset (DP sampling rate)


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
    # joint null-space solve only: rank of the joint system (this layer's inputs + the deficient layer's free
    # coefficients) at the settled pattern, and its unknowns; exact needs rank == unknowns (None: not measured)
    joint_rank: int | None = None
    joint_unknowns: int | None = None
    normal_residual_rel: float | None = None  # iterative solvers: ||N x - A^T b|| / ||A^T b|| where they stopped
    # below a ReLU (None for any other activation): weight rows of dead outputs dropped (of `weight_constraints`),
    # and gradient rows the dead units left all zero (linear: a dead unit's row of n; conv: a filter dead everywhere)
    dead_rows_dropped: int | None = None
    zero_gradient_rows: int | None = None
    # the layer's input is unique: rank == unknowns (measured or proven), or its deficiency completed by the joint
    # solve below; None when the rank was not measured (a large conv solved by PCG: see rank_method / note) or when
    # a layer above is open (its outputs, dead units and rank were read from a wrong estimate: see status_reason)
    determined: bool | None = None
    # a layer with a bias: its bias equations (one per output unit or channel; they fix dL/dz, not x) and how well
    # the recursion's k matched the shared bias gradient, ||db(k) - db|| / ||db|| (None: no bias)
    bias_equations: int = 0
    bias_residual_rel: float | None = None
    # the image layer under attack.image_prior=smooth: the smoothness prior's lam / mean diagonal of the normal
    # matrix (0: the plain solve won GCV; None: no prior)
    prior_lam: float | None = None
    status: Status = "approximate"  # set by the attack from its solve (rgap_bench.attacks.rgap.report)
    status_reason: str = UNASSESSED

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
    status: Status = "approximate"  # how far the result can be trusted; the attack says why in status_reason
    status_reason: str = UNASSESSED
    info: dict[str, Any] = field(default_factory=dict)
