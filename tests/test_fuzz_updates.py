"""Every attack, fed a broken update, returns a graded Reconstruction or raises the suite's own error: never a crash.

Updates are made the way a client makes them on tiny models, then broken once or twice: replaced by noise or scaled
(1e-320 to 1e300), zeroed, laced with NaN or Inf, a tensor dropped, misshapen, retyped or added, or the public
metadata contradicting the tensors (labels outside the label space, batch size, input shape, update kind). The
contract is the runner's: an `RGapBenchError` becomes one clear line and `status: failed`; any other exception would
be a raw traceback. `HYPOTHESIS_PROFILE=explore` draws fresh examples on every run.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from rgap_bench.attacks.dlg import DLG
from rgap_bench.attacks.hgap import HGAP
from rgap_bench.attacks.idlg import IDLG
from rgap_bench.attacks.ig import InvertingGradients
from rgap_bench.attacks.rgap import RGAP
from rgap_bench.errors import RGapBenchError
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.models.layers import LayerSpec, build_from_specs
from rgap_bench.types import STATUSES, UNASSESSED, ClientUpdate, Reconstruction

pytestmark = pytest.mark.usefixtures("single_thread")  # toy models only

FAST = {"max_iterations": 3, "progress": False}
ATTACKS = {
    "rgap": lambda: RGAP(),
    "rgap-sparse": lambda: RGAP(solver="sparse", rank="exact"),
    "rgap-float32": lambda: RGAP(dtype="float32", rank="exact"),
    "dlg": lambda: DLG(**FAST),
    "idlg": lambda: IDLG(**FAST),
    "ig": lambda: InvertingGradients(**FAST, restarts=1),
    "hgap": lambda: HGAP(matching=FAST, random_restarts=0),
}
MODELS = {  # name: (input shape, layer specs, client loss)
    "fcn": ((1, 4, 4), [LayerSpec("linear", 8), LayerSpec("linear", 1, activation="identity")], "binary_logistic"),
    "conv": (  # 1>2 k3 s2 on 6x6 is rank-deficient: the dense path and the joint null-space solve run
        (1, 6, 6),
        [LayerSpec("conv", 2, 3, 2, 1), LayerSpec("linear", 1, activation="identity")],
        "binary_logistic",
    ),
    "conv-full": (
        (1, 4, 4),
        [LayerSpec("conv", 4, 3, 1, 1), LayerSpec("linear", 1, activation="identity")],
        "binary_logistic",
    ),
    "ce": ((1, 4, 4), [LayerSpec("linear", 8), LayerSpec("linear", 3, activation="identity")], "cross_entropy"),
    "ce-bias": (
        (3, 4, 4),
        [LayerSpec("conv", 2, 3, 1, 1, bias=True), LayerSpec("linear", 4, activation="identity", bias=True)],
        "cross_entropy",
    ),
}
BREAKS = (
    "none", "noise", "scale", "zero", "nan", "inf", "drop", "shape", "dtype", "extra", "empty", "labels", "batch",
    "input_shape", "kind",
)  # fmt: skip


class _Updates(dict):
    """A dict whose repr stays short in hypothesis's report of a falsifying example."""

    def __repr__(self) -> str:
        return f"<clean updates of {', '.join(self)}>"


@pytest.fixture(scope="module")
def clean_updates(photo_batch) -> dict[str, tuple[torch.nn.Module, ClientUpdate]]:
    """Each toy model with the update its client sends for one embedded photo (built once: fuzzing only breaks it)."""
    out = _Updates()
    for name, (shape, specs, loss) in MODELS.items():
        torch.manual_seed(0)
        model = build_from_specs(name, shape, specs)
        policy = "flip_prediction" if loss == "binary_logistic" else "true"  # the paper's labelling, where it exists
        client = FedSGDClient(model, loss=loss, label_policy=policy)
        out[name] = (model, client.compute_update(photo_batch(image_size=shape[1], channels=shape[0])))
    return out


def broken(update: ClientUpdate, kind: str, which: int, exponent: int, seed: int, labels: int | None) -> ClientUpdate:
    """`update` broken in one way (`which` picks the tensor, `exponent` the scale, `seed` the noise)."""
    gen = torch.Generator().manual_seed(seed)
    tensors, metadata = dict(update.tensors), update.metadata
    name = list(tensors)[which % len(tensors)] if tensors else None
    t = tensors.get(name, torch.ones(2))
    if kind == "noise":
        tensors = {n: torch.randn(v.shape, generator=gen) * 10.0**exponent for n, v in tensors.items()}
    elif kind == "scale":  # a negative scale flips the sign of the output scalar too
        tensors = {n: v * (-1) ** which * 10.0**exponent for n, v in tensors.items()}
    elif kind == "zero":
        tensors = {n: torch.zeros_like(v) if n == name or seed % 2 else v for n, v in tensors.items()}
    elif kind in ("nan", "inf"):
        t = t if t.is_floating_point() else t.float()
        mask = torch.rand(t.shape, generator=gen) < 0.3
        mask.view(-1)[seed % t.numel()] = True
        tensors[name] = t.masked_fill(mask, math.nan if kind == "nan" else math.inf * (-1) ** seed)
    elif kind == "drop":
        tensors.pop(name, None)
    elif kind == "shape":
        tensors[name] = t.reshape(-1)[: max(t.numel() - 1 - seed % 3, 1)] if seed % 2 else t.reshape(-1)
    elif kind == "dtype":  # the whole update in float64 (a float64 client), or one tensor retyped
        if seed % 4 == 0:
            tensors = {n: v.double() for n, v in tensors.items()}
        else:
            tensors[name] = t.to((torch.float16, torch.bfloat16, torch.int64)[seed % 4 - 1])
    elif kind == "extra":
        tensors["blocks.9.op.weight"] = torch.ones(3)
    elif kind == "empty":
        tensors = {}
    elif kind == "labels":
        metadata = dataclasses.replace(metadata, labels=None if labels is None else torch.full((1 + seed % 2,), labels))
    elif kind == "batch":  # the gradient of one sample said to average two, or of none
        metadata = dataclasses.replace(metadata, batch_size=2 * (seed % 2))
    elif kind == "input_shape":
        c, h, w = metadata.input_shape
        metadata = dataclasses.replace(metadata, input_shape=(c + seed % 2, h + 1, w))
    elif kind == "kind":
        metadata = dataclasses.replace(metadata, kind="weight_delta")
    return ClientUpdate(tensors, metadata)


def break_all(
    update: ClientUpdate, kinds: list[str], which: int, exponent: int, seed: int, labels: int | None
) -> ClientUpdate:
    for kind in kinds:
        update = broken(update, kind, which, exponent, seed, labels)
    return update


def check_contract(attack, model: torch.nn.Module, update: ClientUpdate) -> Reconstruction | None:
    """A Reconstruction of the update's batch shape, or an RGapBenchError with a message; any other exception
    escapes and fails the test."""
    try:
        rec = attack(model, update)
    except RGapBenchError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        event(f"raised {type(exc).__name__}")  # --hypothesis-show-statistics: how often each outcome was reached
        return None
    assert isinstance(rec, Reconstruction)
    images = 1 if rec.combined else update.metadata.batch_size  # a combined reconstruction: one image for the batch
    assert rec.inputs.shape == (images, *update.metadata.input_shape)
    finite = bool(torch.isfinite(rec.inputs).all())
    event(f"reconstructed, {rec.status}" + ("" if finite else ", not finite"))
    assert rec.status in STATUSES and rec.status_reason != UNASSESSED
    assert rec.status == "exact" or rec.status_reason, f"status {rec.status!r} without a reason"
    assert finite or rec.status == "failed", f"a non-finite reconstruction graded {rec.status!r}"
    for layer in rec.layers:
        assert layer.status in STATUSES and layer.status_reason != UNASSESSED
    return rec


@pytest.mark.parametrize("attack_name", list(ATTACKS))
@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model_name=st.sampled_from(list(MODELS)),
    kinds=st.lists(st.sampled_from(BREAKS), min_size=1, max_size=2),
    which=st.integers(0, 3),
    exponent=st.sampled_from([-320, -305, -30, -8, 0, 8, 30, 300]),
    seed=st.integers(0, 2**16),
    labels=st.sampled_from([None, 0, 1, 2, -1, 7]),
)
# float64 gradients scaled into float64's subnormal range: u > 709 overflowed math.exp in the recursion (1e-305);
# the normal matrices underflowed and LAPACK raised its own error (1e-320)
@example(model_name="fcn", kinds=["dtype", "scale"], which=1, exponent=-305, seed=0, labels=None)
@example(model_name="conv", kinds=["dtype", "scale"], which=1, exponent=-320, seed=0, labels=None)
def test_broken_updates_give_a_reconstruction_or_a_clear_error(
    clean_updates, attack_name, model_name, kinds, which, exponent, seed, labels
):
    model, update = clean_updates[model_name]
    check_contract(ATTACKS[attack_name](), model, break_all(update, kinds, which, exponent, seed, labels))
