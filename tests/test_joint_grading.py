"""A jointly solved pair is `exact` only when its joint system is proven full rank, not merely because the
activation pattern settled with a tiny residual: pooled convs can leave directions that no equation reaches."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import rgap_bench.attacks.rgap.null_space as null_space_module
import rgap_bench.attacks.rgap.solvers.joint as joint_module
from rgap_bench.attacks.hgap import HGAP
from rgap_bench.attacks.rgap import RGAP
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.linalg.resources import DenseMemory
from rgap_bench.models import build_convnet

# 12x12 gray, a padded pooled conv with 6 filters below an unpadded pooled conv (6 x 11 = 66 free directions):
# the joint solve settles on the true pattern with a ~1e-7 residual, but its 144 + 66 unknowns have rank 187.
POOLED_12 = [
    {"kind": "conv", "out": 6, "kernel": 3, "padding": 1, "pool": 2, "bias": True},
    {"kind": "conv", "out": 6, "kernel": 3, "pool": 2, "bias": True},
    {"kind": "linear", "out": 10, "activation": "identity", "bias": True},
]


@pytest.fixture(scope="module")
def pooled_case():
    """The pooled 12x12 net, photo 0, its update and R-GAP's answer, with the joint solve's own record."""
    from rgap_bench.data.photos import EmbeddedPhotos

    torch.manual_seed(0)
    model = build_convnet(POOLED_12, in_channels=1, image_size=12)
    batch = EmbeddedPhotos(name="photos", image_size=12, channels=1, index=0).private_batch(0)
    client = FedSGDClient(model, loss="cross_entropy", share_labels=False)
    targets = client.targets(batch)
    solutions = []
    real = joint_module.solve_through_null_space

    def recording(*args, **kwargs):
        solutions.append(real(*args, **kwargs))
        return solutions[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(joint_module, "solve_through_null_space", recording)
        rec = RGAP()(model, client.compute_update(batch, targets))
    return model, batch, targets, rec, solutions[-1]


def test_a_settled_joint_solve_with_open_directions_is_approximate(pooled_case):
    _, _, _, rec, _ = pooled_case
    lower, upper = rec.layers[0], rec.layers[1]
    assert lower.solver == "joint-null-space" and upper.rank_deficiency == 66
    assert lower.pattern_settled is True and lower.residual_rel < 1e-6  # what used to be graded exact
    assert lower.status == "approximate" and upper.status == "approximate" and rec.status == "approximate"
    assert lower.joint_unknowns == 144 + 66 and lower.joint_rank == 187
    assert "rank 187 of 210 unknowns: 23 directions stay open" in lower.status_reason
    assert "66 only partly resolved" in upper.status_reason
    assert "leaves 23 directions open" in upper.status_reason
    assert "layer 0: the joint system has rank 187" in rec.status_reason
    assert {"joint_rank": 187, "joint_unknowns": 210}.items() <= lower.as_dict().items()  # layers.json columns


def test_the_open_directions_are_real_other_inputs_give_the_same_gradient(pooled_case):
    """Grading them approximate is honest, not merely cautious: moving the true input along an open direction
    leaves every shared gradient unchanged (float64, to rounding), while a random step of the same size does not."""
    model, batch, targets, _, joint = pooled_case
    assert joint.open_lower.shape == (144, 23)
    model64 = copy.deepcopy(model).double()
    client = FedSGDClient(model64, loss="cross_entropy")

    def gradient(inputs):
        update = client.compute_update(dataclasses.replace(batch, inputs=inputs), targets)
        return torch.cat([t.reshape(-1) for t in update.tensors.values()])

    x = batch.inputs.double()
    step = 1e-6 * joint.open_lower[:, 0].reshape(x.shape).cpu()
    random = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    random *= step.norm() / random.norm()
    base = gradient(x)
    assert float((gradient(x + step) - base).norm() / base.norm()) < 1e-12
    assert float((gradient(x + random) - base).norm() / base.norm()) > 1e-9


def test_hgap_matches_where_the_joint_solve_left_directions_open(pooled_case, deficient_over_surplus, make_update,
                                                                 photo_batch):  # fmt: skip
    """H-GAP trusts a joint solve (stage rgap-joint, no matching) only when it is graded exact."""
    model, batch, targets, _, _ = pooled_case
    hgap = HGAP(matching={"max_iterations": 2, "progress": False}, random_restarts=0)
    update = FedSGDClient(model, loss="cross_entropy").compute_update(batch, targets)
    assert hgap(model, update).info["hgap"]["stage"] != "rgap-joint"
    toy = deficient_over_surplus(2)
    rec = hgap(toy, make_update(toy, photo_batch(image_size=8, channels=1, index=2)))
    assert rec.info["hgap"]["stage"] == "rgap-joint" and rec.layers[0].joint_rank == rec.layers[0].joint_unknowns


def test_a_joint_rank_too_large_to_measure_is_not_called_exact(
    monkeypatch, deficient_over_surplus, make_update, photo_batch
):
    monkeypatch.setattr(null_space_module, "dense_memory", lambda n, dtype, device: DenseMemory(8e12, 4e9))
    model = deficient_over_surplus(2)
    rec = RGAP(rank="exact")(model, make_update(model, photo_batch(image_size=8, channels=1, index=2)))
    lower, upper = rec.layers[0], rec.layers[1]
    assert lower.pattern_settled is True and lower.joint_rank is None and lower.joint_unknowns == 64 + 340
    assert lower.status == "approximate" and "joint rank not measured" in lower.status_reason
    assert upper.status == "approximate" and "the joint solve with layer 0 is not unique" in upper.status_reason


def test_a_search_that_found_the_input_but_not_the_pattern_is_settled_by_the_forward_pass(
    monkeypatch, deficient_over_surplus, make_update, photo_batch, psnr
):
    """Seed 0, photo 0: the pattern search ends with the right image but 3 units of conv1's output on the wrong
    branch; conv0's forward pass of that image gives the consistent output, and the pair is exact."""
    model = deficient_over_surplus(0)
    batch = photo_batch(image_size=8, channels=1, index=0)
    update = make_update(model, batch)
    rec = RGAP(rank="exact")(model, update)
    assert rec.layers[0].pattern_settled is True and rec.layers[0].residual_rel < 1e-6
    assert rec.status == "exact" and psnr(rec.inputs, batch.inputs) >= 60
    monkeypatch.setattr(null_space_module, "_forward_candidate", lambda joint, best: best)
    searched = RGAP(rank="exact")(model, update)
    assert searched.layers[0].pattern_settled is False and searched.status == "approximate"
    torch.testing.assert_close(searched.inputs, rec.inputs)  # the image is the search's either way
