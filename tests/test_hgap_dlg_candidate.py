"""H-GAP's candidates include attack=dlg's own run (its settings, seed and start) wherever R-GAP leaves layers
open, and the winner is picked by float64 gradient distance: so H-GAP matches the gradient at least as well as DLG."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rgap_bench.attacks.dlg import DLG
from rgap_bench.attacks.hgap import HGAP
from rgap_bench.attacks.matching import MatchingTarget
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.models import build_convnet

pytestmark = pytest.mark.usefixtures("single_thread")  # toy models only

# conv2 keeps too few rows once its dead ReLU outputs are dropped: R-GAP leaves it rank-deficient
DEFICIENT_CONV = [
    {"kind": "conv", "out": 6, "kernel": 3, "padding": 1, "activation": "relu", "bias": True},
    {"kind": "conv", "out": 8, "kernel": 3, "stride": 2, "padding": 1, "activation": "relu", "bias": True},
    {"kind": "linear", "out": 10, "activation": "identity", "bias": True},
]
BUDGET = {"max_iterations": 30, "progress": False}


@pytest.fixture(scope="module")
def deficient_case(photo_batch):
    torch.manual_seed(0)
    model = build_convnet(DEFICIENT_CONV, in_channels=1, image_size=8)
    batch = photo_batch(image_size=8, channels=1)
    client = FedSGDClient(model, loss="cross_entropy", share_labels=False, label_policy="true")
    return model, client.compute_update(batch, client.targets(batch))


def test_hgap_runs_dlg_itself_and_keeps_the_best_gradient_match(deficient_case):
    model, update = deficient_case
    rec = HGAP(matching=BUDGET)(model, update)
    info = rec.info["hgap"]
    distances = info["gradient_distances"]
    assert set(distances) == {"rgap", "matching", "dlg"} and info["deficient_layers"] == [1]
    assert info["stage"] == min(distances, key=distances.__getitem__)
    judge = MatchingTarget.from_update(model, update, "float64")
    dlg = DLG(**BUDGET)(model, update)  # attack=dlg with the same budget: the very same run
    assert distances["dlg"] == judge.distance(dlg.inputs, dlg.labels, soft=False)
    assert rec.gradient_distance == judge.distance(rec.inputs, rec.labels, soft=False) <= distances["dlg"]


def test_dlg_wins_when_the_matching_from_rgap_is_worse(deficient_case, monkeypatch):
    """A matching stage stuck far away (here: noise) loses to DLG's run, whose image is returned as attack=dlg's."""
    model, update = deficient_case
    attack = HGAP(matching=BUDGET)
    stuck = DLG(**BUDGET)(model, update)
    stuck = dataclasses.replace(
        stuck, inputs=torch.rand(stuck.inputs.shape, generator=torch.Generator().manual_seed(1))
    )
    monkeypatch.setattr(attack.matcher, "reconstruct", lambda *_, **__: stuck)
    rec = attack(model, update)
    assert rec.info["hgap"]["stage"] == "dlg" and "DLG's own run matched best" in rec.status_reason
    assert torch.equal(rec.inputs, DLG(**BUDGET)(model, update).inputs)
    assert rec.layers[1].determined is False  # R-GAP's per-layer report is kept whichever candidate wins


def test_the_dlg_candidate_can_be_switched_off(deficient_case):
    model, update = deficient_case
    info = HGAP(matching=BUDGET, dlg_candidate=False)(model, update).info["hgap"]
    assert set(info["gradient_distances"]) == {"rgap", "matching"} and info["dlg_gradient_distance"] is None
