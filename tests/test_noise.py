"""Noise-aware R-GAP: the Tikhonov rules pick ~0 on exact systems and beat plain least squares on noisy ones; the
activation-pattern refit leaves a clean update exactly as before and recovers a noisy one better."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rgap_bench.attacks.rgap import RGAP
from rgap_bench.attacks.rgap.layers import RGAPLayer
from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.pattern import settle_pattern
from rgap_bench.defenses.gaussian import GaussianNoise
from rgap_bench.errors import ConfigError
from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.linear_system import LinearSystem
from rgap_bench.linalg.operators import BlockJacobi
from rgap_bench.linalg.pcg import pcg
from rgap_bench.linalg.regularize import choose_spectral, rule_for
from rgap_bench.linalg.smoothness import smooth_solve
from rgap_bench.models import build_convnet


def _ill_posed(
    noise: float, seed: int = 0, cond: float = 1e6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 60 x 40 system with singular values from 1 to 1 / cond, a smooth x (decaying coefficients), and noisy b."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(60, 40, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(40, 40, generator=gen, dtype=torch.float64))
    s = torch.logspace(0, -math.log10(cond), 40, dtype=torch.float64)
    a = u @ torch.diag(s) @ v.T
    x = v @ (s.sqrt() * torch.randn(40, generator=gen, dtype=torch.float64))  # Picard: coefficients decay
    b = a @ x + noise * torch.randn(60, generator=gen, dtype=torch.float64)
    return a, x, b, s


def _tikhonov(a: torch.Tensor, b: torch.Tensor, rule: str, noise2: float | None):
    e, v = torch.linalg.eigh(a.T @ a)
    c = v.T @ (a.T @ b)
    choice = choose_spectral(e, c, float(b @ b), a.shape[0], rule, noise2)
    return v @ (c / (e + choice.lam)), choice


@pytest.mark.parametrize("rule", ["gcv", "discrepancy"])
def test_the_rules_pick_no_damping_on_an_exact_system(rule):
    # cond 1e4: the normal matrix's smallest eigenvalue (1e-8 x the largest) stays far above rounding's level
    a, x, _, _ = _ill_posed(0.0, cond=1e4)
    b = a @ x
    solution, choice = _tikhonov(a, b, rule, 0.0)
    assert choice.lam_rel <= 1e-10  # rounding's level: GCV sees a residual of ~1e-15
    assert float((solution - x).norm() / x.norm()) < 1e-4  # GCV damps at rounding level: 1e-3 of e_min


@pytest.mark.parametrize("rule", ["gcv", "discrepancy"])
def test_the_rules_beat_plain_least_squares_on_a_noisy_ill_posed_system(rule):
    noise = 1e-4
    a, x, b, _ = _ill_posed(noise)
    plain = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
    solution, choice = _tikhonov(a, b, rule, noise**2 * (a.shape[0] - a.shape[1]))
    assert choice.lam > 0
    assert float((solution - x).norm()) < 0.2 * float((plain - x).norm())


def test_auto_is_the_discrepancy_principle_only_with_a_known_noise_level():
    assert rule_for("auto", 1e-3) == "discrepancy" and rule_for("auto", None) == "gcv"
    assert rule_for("discrepancy", None) == "gcv" and rule_for("none", 1e-3) == "none"


@pytest.mark.parametrize("rule", ["gcv", "discrepancy"])
def test_a_regularised_linear_layer_is_exact_without_noise(rule):
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(30, 50, generator=gen, dtype=torch.float64)
    x = torch.randn(50, generator=gen, dtype=torch.float64)
    k = torch.randn(30, generator=gen, dtype=torch.float64)
    system = LinearSystem(weight, k, torch.outer(k, x), weight @ x, regularize=rule, noise_sigma=0.0)
    solution, residual = system.solve()
    assert system.choice is not None and system.choice.lam_rel <= 1e-10
    assert float((solution - x).norm() / x.norm()) < 1e-12 and residual < 1e-12


def _seeded_net(seed: int, convs: list[tuple[int, int, int, int]], channels: int, size: int) -> torch.nn.Module:
    """Conv layers (out, kernel, stride, padding) and a one-logit linear head, weights drawn from `seed`."""
    torch.manual_seed(seed)
    specs = [{"kind": "conv", "out": o, "kernel": k, "stride": s, "padding": p} for o, k, s, p in convs]
    head = {"kind": "linear", "out": 1, "activation": "identity"}
    return build_convnet([*specs, head], in_channels=channels, image_size=size)


def _cnn(seed: int) -> torch.nn.Module:
    return _seeded_net(seed, [(6, 3, 1, 1), (8, 3, 1, 1)], channels=1, size=8)


def test_the_pattern_refit_keeps_a_clean_update_and_helps_a_noisy_one(photo_batch, make_update, psnr):
    batch = photo_batch(8, 1)
    model = _cnn(0)
    update = make_update(model, batch)
    clean = RGAP(rank="off")(model, update)
    assert torch.equal(clean.inputs, RGAP(rank="off", refit_pattern=False)(model, update).inputs)
    noisy = GaussianNoise(sigma=3e-3, relative=True, seed=0)(update)
    scores = {  # polish off: the refit's own effect
        refit: psnr(RGAP(rank="off", refit_pattern=refit, polish="off")(model, noisy).inputs, batch.inputs)
        for refit in (0, 1)
    }
    assert psnr(clean.inputs, batch.inputs) >= 60
    assert scores[1] >= scores[0] - 0.5  # a few doubtful signs on this toy: no worse (cnn6: +14 dB, docs/noise.md)


def _identity_layer(grad: torch.Tensor) -> RGAPLayer:
    op = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        op.weight.copy_(torch.eye(2))
    return RGAPLayer(0, "blocks.0.op.weight", op, PiecewiseLinear(0.2), (2,), (2,), grad.double())


def test_an_entry_no_longer_in_doubt_takes_its_signs_derivative_not_a_stale_refit():
    # round 1 (a bad first solve) puts both entries in doubt and refits both to the slope; round 2 (a good solve)
    # leaves only the small entry in doubt: the large one must return to sigma'(z) = 1, not keep round 1's 0.2
    # (that stale value was the cliff on cnn6 photo 0 between absolute sigma 1.2e-8 and 1.33e-8, docs/noise.md)
    x_true = torch.tensor([1e-3, 1.0], dtype=torch.float64)
    back_k = torch.ones(2, dtype=torch.float64)
    layer = _identity_layer(torch.outer(back_k, x_true))
    first, good = torch.tensor([0.0, -1.0], dtype=torch.float64), x_true + torch.tensor([1e-2, 0.0])
    k, result, fit = settle_pattern(layer, back_k, x_true, lambda _k: good, first, lambda x: x, torch.float64)
    assert fit.rounds >= 2 and fit.doubtful == 2
    assert torch.equal(result, good)
    assert float(k[1]) == 1.0  # its sign is trusted again: the derivative of z > 0
    assert abs(float(k[0]) - 1.0) < 1e-3  # refitted to the gradient rows at the good solve: close to the true 1


def _cnn_stride2(seed: int) -> torch.nn.Module:
    """cnn6's bottom at 16x16: a stride-2 image layer whose few gradient rows leave it to its weight rows."""
    return _seeded_net(seed, [(12, 4, 2, 2), (16, 3, 1, 1)], channels=3, size=16)


def test_the_smoothness_prior_recovers_a_noisy_image_better_and_leaves_a_clean_one(photo_batch, make_update, psnr):
    gains = []
    for seed in range(3):
        batch, model = photo_batch(16, 3, seed), _cnn_stride2(seed)
        update = make_update(model, batch)
        clean = RGAP(rank="off")(model, update)
        assert torch.equal(clean.inputs, RGAP(rank="off", image_prior="none")(model, update).inputs)
        assert clean.layers[0].prior_lam == 0.0  # a clean update: no prior solve at all
        noisy = GaussianNoise(sigma=1e-2, relative=True, seed=seed)(update)
        smooth = RGAP(rank="off", polish="off")(model, noisy)  # the prior's own effect: no polish on either
        plain = RGAP(rank="off", image_prior="none", polish="off")(model, noisy)
        assert smooth.layers[0].prior_lam > 0 and plain.layers[0].prior_lam is None
        gains.append(psnr(smooth.inputs, batch.inputs) - psnr(plain.inputs, batch.inputs))
    # measured +3.3 / +0.9 / +1.5 dB (cnn6 at 32x32: +5 to +9 dB, docs/noise.md); the old code had no prior (0)
    assert sum(gains) / len(gains) > 0.5, gains


def test_an_unannounced_noise_is_caught_by_the_image_layers_residual(photo_batch, make_update):
    batch, model = photo_batch(16, 3, 0), _cnn_stride2(0)
    noisy = GaussianNoise(sigma=1e-2, relative=True, seed=0)(make_update(model, batch))
    hidden = dataclasses.replace(noisy, metadata=dataclasses.replace(noisy.metadata, noise_sigma=None))
    assert RGAP(rank="off")(model, hidden).layers[0].prior_lam > 0


def test_gcv_picks_no_smoothing_on_an_exact_conv_system(make_conv_system):
    system, x = make_conv_system((2, 8, 8), 4, (4, 4), (2, 2), (2, 2))
    plain = pcg(system.normal, system.normal_rhs(), BlockJacobi(system), tol=1e-12, max_iter=500).x
    solution, choice = smooth_solve(system, plain, tol=1e-12, max_iter=500)
    assert choice.lam_rel == 0.0 and torch.equal(solution, plain)
    assert float((solution - x).norm() / x.norm()) < 1e-8


def test_prior_layers_extends_the_prior_to_the_layers_above_the_image(photo_batch, make_update):
    batch, model = photo_batch(16, 3, 0), _cnn_stride2(0)
    noisy = GaussianNoise(sigma=1e-2, relative=True, seed=0)(make_update(model, batch))
    layers = RGAP(rank="off", prior_layers=2)(model, noisy).layers
    assert layers[1].prior_lam is not None and layers[2].prior_lam is None  # convs only, the bottom two


@pytest.mark.parametrize(
    "bad", [{"image_prior": "tv"}, {"image_prior_lam": -1.0}, {"image_prior_lam": math.nan}, {"prior_layers": -1}]
)
def test_the_prior_options_are_checked(bad):
    with pytest.raises(ConfigError, match=r"image_prior|prior_layers"):
        RGAPOptions(**bad)


def test_the_refit_keeps_its_best_round_when_a_later_one_is_worse():
    # a refit can trust a wrong sign again and drift off over the following rounds (cnn6 photo 2 at relative noise
    # 1e-3: 30.3 dB from the last round, 34.9 from the best); keep_best returns the round whose W x fits z best
    x_true = torch.tensor([1e-3, 1.0], dtype=torch.float64)
    back_k = torch.ones(2, dtype=torch.float64)
    layer = _identity_layer(torch.outer(back_k, x_true))
    good, bad = x_true + torch.tensor([1e-2, 0.0]), x_true + torch.tensor([1e-1, 0.5])

    def run(keep_best):
        rounds = iter([good, bad, bad])
        first = torch.tensor([0.0, -1.0], dtype=torch.float64)
        return settle_pattern(layer, back_k, x_true, lambda _k: next(rounds), first, lambda x: x, torch.float64,
                              rounds=3, keep_best=keep_best)  # fmt: skip

    _, kept, fit = run(True)
    assert fit.rounds == 3 and torch.equal(kept, good)
    assert torch.equal(run(False)[1], bad)  # the last round, as before
