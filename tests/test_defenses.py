"""Each defence's effect on a known update, DP-SGD's per-example clipping and epsilon, and Hydra composition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from rgap_bench.defenses.clipping import Clipping
from rgap_bench.defenses.dpsgd import DPSGD, rdp_epsilon
from rgap_bench.defenses.gaussian import GaussianNoise
from rgap_bench.defenses.laplace import LaplaceNoise
from rgap_bench.defenses.pruning import Pruning
from rgap_bench.defenses.quantization import Quantization
from rgap_bench.errors import ConfigError
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.losses import BinaryLogistic
from rgap_bench.models import build_convnet
from rgap_bench.types import ClientContext, ClientUpdate, UpdateMetadata


def known_update(n: int = 200_000, value: float | None = 0.0) -> ClientUpdate:
    """Constant `value` everywhere, or standard normal entries when `value` is None."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(n, generator=g) if value is None else torch.full((n,), value)
    meta = UpdateMetadata(kind="gradient", batch_size=1, loss=BinaryLogistic(), input_shape=(1,))
    return ClientUpdate({"a": base[: n // 2].view(-1, 100), "b": base[n // 2 :]}, meta)


def flat(update: ClientUpdate) -> torch.Tensor:
    return torch.cat([t.flatten() for t in update.tensors.values()]).double()


def test_gaussian_noise_has_the_asked_statistics_and_is_seeded():
    update = known_update()
    out = GaussianNoise(sigma=0.1, seed=3)(update)
    noise = flat(out)
    n = noise.numel()
    assert abs(float(noise.mean())) < 5 * 0.1 / math.sqrt(n)
    assert float(noise.std()) == pytest.approx(0.1, rel=0.01)
    assert torch.equal(flat(GaussianNoise(sigma=0.1, seed=3)(update)), noise)
    assert not torch.equal(flat(GaussianNoise(sigma=0.1, seed=4)(update)), noise)
    assert out.metadata.defenses == ("gaussian",)


def test_laplace_noise_has_the_asked_statistics():
    b = 0.05
    noise = flat(LaplaceNoise(scale=b, seed=0)(known_update()))
    assert abs(float(noise.mean())) < 5 * math.sqrt(2) * b / math.sqrt(noise.numel())
    assert float(noise.abs().mean()) == pytest.approx(b, rel=0.01)  # E|X| = b
    assert float(noise.std()) == pytest.approx(math.sqrt(2) * b, rel=0.01)


@pytest.mark.parametrize(
    "cls, key, std_per_level", [(GaussianNoise, "sigma", 1.0), (LaplaceNoise, "scale", math.sqrt(2))]
)
def test_relative_noise_is_a_fraction_of_the_update_rms_and_announced(cls, key, std_per_level):
    update = known_update(n=100_000, value=None)
    scaled = ClientUpdate({n: 1e-6 * t for n, t in update.tensors.items()}, update.metadata)  # RMS ~ 1e-6
    rms = float(flat(scaled).pow(2).mean().sqrt())
    defense = cls(**{key: 0.01, "relative": True})
    out = defense(scaled)
    report = defense.report()
    assert report["sigma_abs"] == pytest.approx(0.01 * rms * std_per_level, rel=1e-12)
    assert report["relative_level"] == pytest.approx(0.01 * std_per_level, rel=1e-12)
    assert float((flat(out) - flat(scaled)).std()) == pytest.approx(report["sigma_abs"], rel=0.02)
    assert out.metadata.noise_sigma == report["sigma_abs"]
    assert out.metadata.record()["noise_sigma"] == report["sigma_abs"]


def test_independent_noise_steps_announce_their_std_in_quadrature(compose_config):
    cfg = compose_config("defense=[gaussian,laplace]", "defense.gaussian.sigma=3e-3", "defense.laplace.scale=2e-3")
    out = instantiate(cfg.defense)(known_update(n=1000, value=None))
    assert out.metadata.noise_sigma == pytest.approx(math.hypot(3e-3, math.sqrt(2) * 2e-3), rel=1e-12)


@pytest.mark.parametrize("value", [math.inf, math.nan, -1.0])
def test_a_noise_level_that_is_not_a_finite_number_is_refused(value):
    with pytest.raises(ConfigError, match=r"defense\.gaussian\.sigma must be a finite number >= 0"):
        GaussianNoise(sigma=value)
    with pytest.raises(ConfigError, match=r"defense\.laplace\.scale must be a finite number >= 0"):
        LaplaceNoise(scale=value)


def test_distortion_is_the_relative_change():
    update = known_update(n=100_000, value=None)
    defense = GaussianNoise(sigma=0.01)
    defense(update)
    # ||noise|| / ||u|| with u ~ N(0, 1): about sigma
    assert defense.report() == {
        "name": "gaussian",
        "sigma": 0.01,
        "relative": False,
        "sigma_abs": 0.01,
        "relative_level": pytest.approx(0.01, rel=0.01),  # sigma / RMS, RMS ~ 1
        "distortion": pytest.approx(0.01, rel=0.02),
    }


def test_pruning_zeroes_exactly_the_smallest_fraction_of_each_tensor():
    update = known_update(n=20_000, value=None)
    defense = Pruning(ratio=0.9)
    out = defense(update)
    for name, t in update.tensors.items():
        pruned = out.tensors[name]
        assert int((pruned == 0).sum()) == int(0.9 * t.numel())
        kept = pruned != 0
        assert torch.equal(pruned[kept], t[kept])
        assert float(t[kept].abs().min()) >= float(t[~kept].abs().max())
    assert defense.report()["sparsity"] == pytest.approx(0.9)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_quantization_uses_at_most_2_to_the_bits_levels_and_errs_half_a_step(bits):
    update = known_update(n=20_000, value=None)
    out = Quantization(bits=bits)(update)
    for name, t in update.tensors.items():
        q = out.tensors[name]
        assert len(torch.unique(q)) <= 2**bits
        step = float(t.max() - t.min()) / (2**bits - 1)
        assert float((q - t).abs().max()) <= step / 2 + 1e-6


def test_clipping_bounds_the_norm_exactly_and_leaves_short_updates_alone():
    update = known_update(n=10_000, value=None)
    norm = float(flat(update).norm())
    out = Clipping(max_norm=norm / 10)(update)
    assert float(flat(out).norm()) == pytest.approx(norm / 10, rel=1e-6)
    assert torch.allclose(flat(out) * 10, flat(update), rtol=1e-5)
    same = Clipping(max_norm=2 * norm)
    assert torch.equal(flat(same(update)), flat(update))
    assert same.report()["clipped"] is False


def _tiny_client_batch(batch: int = 4):
    torch.manual_seed(0)
    model = build_convnet([{"kind": "linear", "out": 1, "activation": "identity"}], in_channels=1, image_size=4)
    inputs = torch.rand(batch, 1, 4, 4)
    targets = torch.tensor([0, 1, 1, 0][:batch])
    client = FedSGDClient(model, label_policy="true")
    grads = torch.autograd.grad(
        torch.nn.functional.binary_cross_entropy_with_logits(model(inputs)[:, 0], targets.float()),
        list(model.parameters()),
    )
    meta = UpdateMetadata(kind="gradient", batch_size=batch, loss=BinaryLogistic(), input_shape=(1, 4, 4))
    update = ClientUpdate(dict(zip([n for n, _ in model.named_parameters()], grads, strict=True)), meta)
    context = ClientContext(model, inputs, targets, BinaryLogistic(), dataset_size=100)
    return client, update, context


def test_dpsgd_without_noise_or_clipping_is_the_plain_gradient():
    _, update, context = _tiny_client_batch()
    out = DPSGD(clip_norm=1e6, noise_multiplier=0.0)(update, context)
    for name, g in update.tensors.items():
        assert torch.allclose(out.tensors[name], g, atol=1e-6)


def test_dpsgd_clips_each_example_to_the_norm():
    _, update, context = _tiny_client_batch()
    x, y = context.inputs, context.targets
    w = context.model.blocks[0].op.weight.detach()
    per_example = (torch.sigmoid(x.flatten(1) @ w.T)[:, 0] - y.float())[:, None] * x.flatten(1)  # logistic grads
    c = 1e-3
    expected = (per_example * (c / (per_example.norm(dim=1, keepdim=True) + 1e-6))).mean(0)
    defense = DPSGD(clip_norm=c, noise_multiplier=0.0)
    out = defense(update, context)
    assert torch.allclose(out.tensors["blocks.0.op.weight"].flatten(), expected, atol=1e-9)
    assert defense.report()["clipped_fraction"] == 1.0


def test_dpsgd_epsilon_matches_the_rdp_accountant():
    from opacus.accountants import RDPAccountant

    _, update, context = _tiny_client_batch()
    defense = DPSGD(clip_norm=1.0, noise_multiplier=1.1, delta=1e-5)
    for _ in range(3):
        defense(update, context)
    accountant = RDPAccountant()
    for _ in range(3):
        accountant.step(noise_multiplier=1.1, sample_rate=4 / 100)
    report = defense.report()
    assert report["steps"] == 3 and report["sample_rate"] == pytest.approx(0.04)
    assert report["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-9)


def test_rdp_epsilon_of_the_full_batch_gaussian_mechanism_in_closed_form():
    # q = 1: the Gaussian mechanism's RDP is alpha / (2 sigma^2) per step, converted as in Balle et al. (2020)
    sigma, steps, delta = 2.0, 10, 1e-5
    alphas = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)), dtype=float)
    rdp = steps * alphas / (2 * sigma**2)
    eps = rdp - (np.log(delta) + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas)
    assert rdp_epsilon(sigma, 1.0, steps, delta) == pytest.approx(float(eps.min()), rel=1e-9)
    assert rdp_epsilon(0.0, 0.01, 1, delta) == math.inf


def test_dpsgd_refuses_weight_deltas_and_late_positions():
    _, update, context = _tiny_client_batch()
    delta = ClientUpdate(update.tensors, UpdateMetadata("weight_delta", 4, BinaryLogistic(), (1, 4, 4)))
    with pytest.raises(ConfigError, match="fedsgd"):
        DPSGD(clip_norm=1.0, noise_multiplier=1.0)(delta, context)
    with pytest.raises(ConfigError, match="first"):
        DPSGD(clip_norm=1.0, noise_multiplier=1.0)(Pruning(ratio=0.5)(update), context)


def test_defences_compose_in_the_order_selected(compose_config):
    cfg = compose_config(
        "defense=[clipping,gaussian,pruning]", "defense.clipping.max_norm=0.5", "defense.gaussian.sigma=0.01"
    )
    pipeline = instantiate(cfg.defense)
    assert [d.name for d in pipeline.defenses] == ["clipping", "gaussian", "pruning"]
    update = known_update(n=10_000, value=None)
    out = pipeline(update)
    report = pipeline.report()
    assert report["name"] == "clipping+gaussian+pruning"
    assert [s["name"] for s in report["steps"]] == ["clipping", "gaussian", "pruning"]
    assert report["steps"][0]["max_norm"] == 0.5 and report["steps"][1]["sigma"] == 0.01
    assert report["distortion"] > 0 and out.metadata.defenses == ("clipping", "gaussian", "pruning")
    assert float((flat(out) != 0).double().mean()) == pytest.approx(0.1, abs=1e-3)


def test_single_defence_reports_only_its_parameters_and_stray_ones_are_refused(compose_config):
    cfg = compose_config("defense=gaussian", "defense.gaussian.sigma=1e-3")
    pipeline = instantiate(cfg.defense)
    assert pipeline.report()["steps"] == [{"name": "gaussian", "sigma": 1e-3, "relative": False}]
    with pytest.raises(InstantiationException, match="pruning") as info:
        instantiate(compose_config("defense=gaussian", "defense.pruning.ratio=0.5").defense)
    assert isinstance(info.value.__cause__, ConfigError)
    assert instantiate(compose_config("defense=none").defense).report() == {
        "name": "none",
        "distortion": 0.0,
        "steps": [],
    }
