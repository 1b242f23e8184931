"""Shared machinery of the gradient-matching attacks (DLG, iDLG, Inverting Gradients, H-GAP's matching stage).

A matching attack searches for dummy inputs (and, when the labels are unknown, dummy soft labels) whose gradient,
computed exactly as the client computed its own (same loss, same reduction, same model mode, all read from the
update's metadata), is close to the shared one. Everything an attack needs is built here from the global model and
the `ClientUpdate` only; the private batch never reaches this module.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from rgap_bench.attacks.metadata import check_batch_size, shared_labels
from rgap_bench.errors import ConfigError, InvalidUpdateError
from rgap_bench.losses import BinaryLogistic, Loss
from rgap_bench.types import ClientUpdate

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ----------------------------------------------------------------------------------------------- distances, priors


def euclidean_distance(dummy: Sequence[Tensor], shared: Sequence[Tensor]) -> Tensor:
    """||g - g*||^2 / ||g*||^2 over all tensors: DLG's squared distance, made scale-free so that one tolerance
    means the same for every model and L-BFGS's absolute stopping tests never fire on tiny gradients."""
    num = sum((d - s).pow(2).sum() for d, s in zip(dummy, shared, strict=True))
    den = sum(s.pow(2).sum() for s in shared)
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def cosine_distance(dummy: Sequence[Tensor], shared: Sequence[Tensor]) -> Tensor:
    """1 - cos(g, g*) with all tensors concatenated (Inverting Gradients): blind to the gradient's scale."""
    dot = sum((d * s).sum() for d, s in zip(dummy, shared, strict=True))
    nd = sum(d.pow(2).sum() for d in dummy)
    ns = sum(s.pow(2).sum() for s in shared)
    return 1.0 - dot / (nd.sqrt() * ns.sqrt()).clamp_min(torch.finfo(dot.dtype).tiny)


DISTANCES: dict[str, Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor]] = {
    "euclidean": euclidean_distance,
    "cosine": cosine_distance,
}


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference of neighbouring pixels (anisotropic TV, as in Inverting Gradients)."""
    if x.dim() < 4 or x.shape[-1] < 2 or x.shape[-2] < 2:
        return x.new_zeros(())
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


# --------------------------------------------------------------------------------------------------- the target


@dataclass
class MatchingTarget:
    """The global model (a private copy in the attack's dtype and the client's mode) and the gradient to match."""

    model: nn.Module
    names: list[str]
    params: list[Tensor]
    shared: list[Tensor]
    loss: Loss  # the client's loss and reduction, from the update's metadata
    batch_size: int
    input_shape: tuple[int, ...]
    outputs: int
    shared_labels: Tensor | None

    @classmethod
    def from_update(cls, model: nn.Module, update: ClientUpdate, dtype: str = "float32") -> MatchingTarget:
        if dtype not in DTYPES:
            raise ConfigError(f"attack.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        meta = update.metadata
        if meta.kind != "gradient":
            raise InvalidUpdateError(f"gradient matching needs a FedSGD gradient; got an update of kind {meta.kind!r}")
        check_batch_size(meta)
        if not update.tensors:
            raise InvalidUpdateError("the update carries no tensors: nothing to match; check what the client sent")
        device = next(iter(update.tensors.values())).device
        work = copy.deepcopy(model).to(device=device, dtype=DTYPES[dtype])
        # The client's mode (dropout, batch-norm statistics) is public metadata; without it, keep the server's.
        if meta.training is not None:
            work.train(meta.training)
        named = dict(work.named_parameters())
        names, params, shared = [], [], []
        for name, grad in update.tensors.items():
            if name not in named:
                raise InvalidUpdateError(f"the update has a tensor {name!r} the model does not have")
            if grad.shape != named[name].shape:
                raise InvalidUpdateError(f"{name}: update shape {tuple(grad.shape)} != {tuple(named[name].shape)}")
            if not torch.isfinite(grad).all():
                raise InvalidUpdateError(f"{name} contains NaN or Inf; check the client loss and the defence")
            names.append(name)
            params.append(named[name].requires_grad_(True))
            shared.append(grad.detach().to(device=device, dtype=DTYPES[dtype]))
        try:
            with torch.no_grad():
                outputs = int(work(torch.zeros((1, *meta.input_shape), device=device, dtype=DTYPES[dtype])).shape[1])
        except RuntimeError as exc:
            raise InvalidUpdateError(
                f"the model cannot take inputs of the update's shape {tuple(meta.input_shape)} ({exc}); the update "
                "was made for another model or data set"
            ) from exc
        labels = shared_labels(meta, 2 if isinstance(meta.loss, BinaryLogistic) else outputs)
        labels = None if labels is None else labels.to(device)
        return cls(
            work, names, params, shared, meta.loss, meta.batch_size, tuple(meta.input_shape),
            outputs, labels,
        )  # fmt: skip

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    def gradients(self, inputs: Tensor, labels: Tensor, soft: bool, create_graph: bool = True) -> list[Tensor]:
        """The gradient a client would send for (inputs, labels); differentiable w.r.t. both when asked."""
        logits = self.model(inputs)
        loss = self.loss.soft(logits, labels) if soft else self.loss(logits, labels)
        return list(torch.autograd.grad(loss, self.params, create_graph=create_graph))

    def distance(self, inputs: Tensor, labels: Tensor, soft: bool = False, metric: str = "euclidean") -> float:
        """Gradient distance of a finished candidate; uses only the update (never the private batch)."""
        with torch.enable_grad():
            x = inputs.detach().to(device=self.device, dtype=self.dtype)
            grads = self.gradients(x, labels.to(self.device), soft, create_graph=False)
        return float(DISTANCES[metric](grads, self.shared))


# ---------------------------------------------------------------------------------------------- optimisation loop


def _adam(params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr)


def _lbfgs(params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    # As in DLG's code: fixed step, no line search (a strong-Wolfe search stalled on LeakyReLU kinks in our runs).
    # Our own budget / tolerance logic ends the run; L-BFGS's internal absolute tests are switched off.
    return torch.optim.LBFGS(params, lr=lr, max_iter=20, history_size=100, tolerance_grad=0.0, tolerance_change=0.0)


OPTIMIZERS: dict[str, Callable[[list[Tensor], float], torch.optim.Optimizer]] = {"adam": _adam, "lbfgs": _lbfgs}
SCHEDULES = ("none", "step")


@dataclass(frozen=True)
class LoopSettings:
    """How one matching run is optimised; `max_iterations` counts gradient evaluations for every optimiser."""

    optimizer: str = "lbfgs"
    lr: float = 1.0
    max_iterations: int = 300
    schedule: str = "none"  # step: lr x0.1 at 3/8, 5/8 and 7/8 of the budget (Inverting Gradients)
    tolerance: float = 0.0  # stop once the gradient distance is at or below this
    signed: bool = False  # Adam steps on the sign of the input gradient (Inverting Gradients)
    box: tuple[float, float] | None = None  # project the inputs onto [lo, hi] after every step
    progress: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"attack.optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"attack.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.max_iterations < 1:
            raise ConfigError(f"attack.max_iterations must be >= 1, got {self.max_iterations}")


@dataclass
class LoopResult:
    """The best iterate of one run (lowest objective seen at any evaluation, not the last one)."""

    variables: list[Tensor]
    objective: float
    distance: float
    evaluations: int
    stopped: str  # budget | tolerance | diverged
    trace: list[float] = field(default_factory=list)


class _Stop(Exception):
    """Raised from inside the closure: the only clean way to end an L-BFGS step mid-way."""


def _progress_enabled(requested: bool) -> bool:
    return requested and sys.stderr.isatty()


def optimise(
    variables: list[Tensor],
    objective: Callable[[list[Tensor]], tuple[Tensor, Tensor]],
    settings: LoopSettings,
    description: str = "matching",
) -> LoopResult:
    """Minimise `objective(variables) -> (objective, gradient distance)`; `variables[0]` are the dummy inputs.

    Every evaluation is checked against the best so far, so the best iterate survives L-BFGS line searches and
    Adam's noisy late steps; the run ends at the budget, at the tolerance or when the objective stops being finite.
    """
    optimizer = OPTIMIZERS[settings.optimizer](variables, settings.lr)
    scheduler = None
    if settings.schedule == "step" and settings.optimizer == "adam":
        n = settings.max_iterations
        milestones = [int(n * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    best = LoopResult([v.detach().clone() for v in variables], math.inf, math.inf, 0, "budget")
    trace_every = max(1, settings.max_iterations // 50)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("dist {task.fields[dist]:.3e}"), TimeRemainingColumn(),
        disable=not _progress_enabled(settings.progress), transient=True,
    )  # fmt: skip
    task = progress.add_task(description, total=settings.max_iterations, dist=math.inf)

    def closure() -> Tensor:
        if best.evaluations >= settings.max_iterations:
            raise _Stop
        optimizer.zero_grad(set_to_none=True)
        total, dist = objective(variables)
        best.evaluations += 1
        value, dist_value = float(total.detach()), float(dist.detach())
        if not math.isfinite(value):
            best.stopped = "diverged"
            raise _Stop
        if value < best.objective:
            best.objective, best.distance = value, dist_value
            best.variables = [v.detach().clone() for v in variables]
        if best.evaluations % trace_every == 0:
            best.trace.append(best.distance)
        progress.update(task, advance=1, dist=best.distance)
        grads = torch.autograd.grad(total, variables)
        for v, g in zip(variables, grads, strict=True):
            v.grad = g
        if settings.signed:
            variables[0].grad.sign_()
        if dist_value <= settings.tolerance:
            best.stopped = "tolerance"
            raise _Stop
        return total

    with progress:
        try:
            while True:
                optimizer.step(closure)
                if scheduler is not None:
                    scheduler.step()
                if settings.box is not None:
                    with torch.no_grad():
                        variables[0].clamp_(*settings.box)
        except _Stop:
            pass
    if best.stopped == "diverged":
        log.warning("%s: the objective became non-finite after %d evaluations", description, best.evaluations)
    return best
