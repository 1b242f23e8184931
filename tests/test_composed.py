"""attack.joint=composed: a deficient conv solved through the conv below it, with no null space, and its proof."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import rgap_bench.attacks.rgap.deferred as deferred
from rgap_bench.attacks.rgap import RGAP
from rgap_bench.defenses.gaussian import update_rms, with_noise
from rgap_bench.errors import ConfigError
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.linalg.sparse_spd import factor_spd
from rgap_bench.models import build_convnet
from rgap_bench.types import ClientUpdate, PrivateBatch


def _deficient_over_wide(seed: int, filters: int = 12) -> tuple[torch.nn.Module, PrivateBatch]:
    """conv 1>9 below conv 9>F s2 on 12x12 gray: the upper's counting bound leaves 144 of its 1296 input directions
    free (F = 12), and its 432 weight rows outnumber the 144 pixels below."""
    torch.manual_seed(seed)
    model = build_convnet(
        [
            {"kind": "conv", "out": 9, "kernel": 3, "stride": 1, "padding": 1},
            {"kind": "conv", "out": filters, "kernel": 3, "stride": 2, "padding": 1},
            {"kind": "linear", "out": 1, "activation": "identity"},
        ],
        in_channels=1,
        image_size=12,
    )
    image = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(seed))
    zeros = torch.zeros(1, dtype=torch.long)
    return model, PrivateBatch(image, zeros, zeros, zeros, "random")


@pytest.mark.parametrize("seed", [0, 1])
def test_composed_and_null_space_routes_agree_and_are_exact(seed):
    model, batch = _deficient_over_wide(seed)
    update = FedSGDClient(model).compute_update(batch)
    composed = RGAP(joint="composed")(model, update)
    null_space = RGAP(joint="null_space")(model, update)
    lower, upper = composed.layers[0], composed.layers[1]
    assert upper.solver == lower.solver == "joint-composed"
    assert upper.rank_method.startswith("counting bound") and upper.rank_deficiency == 1296 - upper.rank > 0
    assert lower.joint_rank == lower.joint_unknowns == 144 and lower.rank_method == "sparse factor certificate"
    # a float32 client update: its rounding (~1e-7) is all the residual there is
    assert lower.pattern_settled and lower.residual_rel < 1e-5 and upper.residual_rel < 1e-5
    assert [r.status for r in composed.layers] == ["exact"] * 3 and upper.determined
    assert null_space.layers[1].solver.startswith("dense") and null_space.layers[0].solver == "joint-null-space"
    assert float((composed.inputs - batch.inputs).abs().max()) < 1e-5
    assert float((composed.inputs - null_space.inputs).abs().max()) < 1e-5


def test_composed_route_settles_on_several_images_of_one_model():
    """Images the plain search once settled wrongly on (a pattern that fits the weight rows but not the gradient
    rows): the damped phase and the retries make every one exact through the composed route."""
    model, _ = _deficient_over_wide(0)
    for seed in range(1, 5):
        _, batch = _deficient_over_wide(seed)
        rec = RGAP(joint="composed")(model, FedSGDClient(model).compute_update(batch))
        assert rec.layers[0].solver == "joint-composed" and rec.layers[0].status == "exact", seed
        assert float((rec.inputs - batch.inputs).abs().max()) < 1e-5, seed


def test_a_noisy_update_keeps_the_composed_answer():
    """Under announced noise nothing fits every equation: the composed answer stands (graded approximate, with the
    reason) instead of the null-space route's (here the head above fits any update, so only the announcement tells
    noise from a wrong pattern)."""
    model, batch = _deficient_over_wide(0)
    update = FedSGDClient(model).compute_update(batch)
    gen = torch.Generator().manual_seed(0)
    std = 1e-3 * update_rms(update.tensors)
    noisy = {k: v + std * torch.randn(v.shape, generator=gen) for k, v in update.tensors.items()}
    rec = RGAP(joint="composed")(model, with_noise(ClientUpdate(noisy, update.metadata), std))
    lower = rec.layers[0]
    assert lower.solver == "joint-composed" and lower.status == "approximate"
    assert "residual too large" in lower.status_reason and bool(torch.isfinite(rec.inputs).all())


def test_without_a_proof_the_null_space_route_takes_over(monkeypatch):
    """A composed solve that proves nothing hands the layer to the dense null-space route, still exact."""
    model, batch = _deficient_over_wide(0)
    update = FedSGDClient(model).compute_update(batch)
    monkeypatch.setattr(deferred, "solve_composed", lambda *args, **kwargs: None)
    rec = RGAP(joint="composed")(model, update)
    assert rec.layers[1].solver.startswith("dense") and rec.layers[0].solver == "joint-null-space"
    assert [r.status for r in rec.layers] == ["exact"] * 3
    assert float((rec.inputs - batch.inputs).abs().max()) < 1e-5


def test_too_few_weight_rows_are_not_composed(deficient_over_surplus, make_update, photo_batch):
    """conv 8>2 s2 has 32 weight rows for the 64 pixels below: the composed system could not be full rank."""
    model = deficient_over_surplus(0)
    rec = RGAP(joint="composed")(model, make_update(model, photo_batch(image_size=8, channels=1)))
    assert rec.layers[0].solver == "joint-null-space"


def test_sparse_factor_proves_full_rank_and_solves():
    gen = np.random.default_rng(0)
    a = gen.standard_normal((40, 25))
    spd = sp.csc_matrix(a.T @ a)
    factor = factor_spd(spd, rcond=1e-10)
    rhs = gen.standard_normal(25)
    assert factor.proven and factor.shift > 0
    assert np.allclose(factor.solve(rhs), np.linalg.solve(a.T @ a, rhs), rtol=1e-10, atol=1e-12)
    singular = a[:, :24] @ gen.standard_normal((24, 25))  # rank 24 of 25
    assert not factor_spd(sp.csc_matrix(singular.T @ singular), rcond=1e-10).proven
    assert not factor_spd(spd).proven  # no shift, no proof


def test_joint_option_is_checked():
    with pytest.raises(ConfigError, match=r"attack\.joint"):
        RGAP(joint="dense")
