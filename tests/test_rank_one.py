"""`attack.rank_one`: on a noisy one-sample update a linear layer's input comes from the top singular vector of its
rank-one gradient k x^T (linalg/rank_one.py); clean updates and combined batches keep the plain solve."""

from __future__ import annotations

import pytest
import torch

from rgap_bench.attacks.rgap import RGAP
from rgap_bench.data.photos import EmbeddedPhotos
from rgap_bench.defenses.gaussian import GaussianNoise
from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.chain_refine import ChainLink, refine_chain
from rgap_bench.linalg.rank_one import rank_one_input, top_right_singular_vector
from rgap_bench.models import build_convnet


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    specs = [{"kind": "linear", "out": 96}, {"kind": "linear", "out": 48}]
    return build_convnet([*specs, {"kind": "linear", "out": 1, "activation": "identity"}], in_channels=1, image_size=8)


def test_a_clean_rank_one_gradient_gives_its_input_exactly():
    gen = torch.Generator().manual_seed(0)
    k, x = torch.randn(40, generator=gen, dtype=torch.float64), torch.rand(30, generator=gen, dtype=torch.float64)
    fit = rank_one_input(torch.outer(k, x), k)
    assert fit.converged and fit.iterations <= 3 and fit.gap < 1e-6
    torch.testing.assert_close(fit.x, x, rtol=1e-12, atol=0)


def test_power_iteration_finds_the_top_singular_vector():
    gen = torch.Generator().manual_seed(1)
    matrix = torch.randn(20, 12, generator=gen, dtype=torch.float64)
    v, _, converged = top_right_singular_vector(matrix, max_iter=5000)
    top = torch.linalg.svd(matrix).Vh[0]
    assert converged and abs(float(v @ top)) == pytest.approx(1.0, abs=1e-10)


def test_truncation_beats_row_scaled_least_squares_on_noisy_rows():
    """k spans three decades (as a network's errors do): dividing rows by k_i makes the small ones the loudest."""
    errors_rank_one, errors_scaled = [], []
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        k = torch.logspace(-3, 0, 64, dtype=torch.float64) * torch.sign(torch.randn(64, generator=gen))
        x = torch.rand(50, generator=gen, dtype=torch.float64)
        grad = torch.outer(k, x) + 1e-4 * torch.randn(64, 50, generator=gen, dtype=torch.float64)
        errors_rank_one.append(float((rank_one_input(grad, k).x - x).norm()))
        errors_scaled.append(float(((grad / k[:, None]).mean(0) - x).norm()))
    # the rank-one error is the noise's share along x over ||k|| (~1e-4); the scaled mean's is ~1e-4 / 1e-3 / 8
    assert max(errors_rank_one) * 10 < min(errors_scaled)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_noisy_mlp_update_is_recovered_far_better_with_the_rank_one_fit(seed, photo_batch, make_update, psnr):
    model, batch = _mlp(seed), photo_batch(8, 1, seed)
    noisy = GaussianNoise(sigma=1e-3, relative=True, seed=seed)(make_update(model, batch))
    rank_one = RGAP(rank="off")(model, noisy)
    plain = RGAP(rank="off", rank_one=False)(model, noisy)
    assert {layer.solver for layer in rank_one.layers[:2]} == {"rank-one-linear"}
    assert "top singular vector" in rank_one.layers[0].note
    assert psnr(rank_one.inputs, batch.inputs) >= psnr(plain.inputs, batch.inputs) + 10


def test_a_clean_update_keeps_the_plain_solve(photo_batch, make_update):
    model, batch = _mlp(0), photo_batch(8, 1, 0)
    update = make_update(model, batch)
    result = RGAP(rank="off")(model, update)
    assert {layer.solver for layer in result.layers} == {"direct-linear"}
    assert "Gauss-Newton" not in result.layers[0].note
    assert torch.equal(result.inputs, RGAP(rank="off", rank_one=False)(model, update).inputs)


def test_a_combined_batch_is_not_truncated_to_one_sample(make_update):
    """A batch's gradient is rank B: its combined reconstruction stays the plain least squares."""
    model = _mlp(0)
    batch = EmbeddedPhotos(name="photos", image_size=8, channels=1, batch_size=2).private_batch(0)
    noisy = GaussianNoise(sigma=1e-3, relative=True, seed=0)(make_update(model, batch))
    result = RGAP(rank="off")(model, noisy)
    assert result.combined
    assert "rank-one-linear" not in {layer.solver for layer in result.layers}
    assert torch.equal(result.inputs, RGAP(rank="off", rank_one=False)(model, noisy).inputs)


def test_the_chain_refinement_returns_exact_estimates_unchanged_and_pools_noisy_ones():
    gen = torch.Generator().manual_seed(3)
    w1, w2 = (
        torch.randn(20, 12, generator=gen, dtype=torch.float64),
        torch.randn(6, 20, generator=gen, dtype=torch.float64),
    )
    links = [ChainLink(w1, None, PiecewiseLinear(0.2)), ChainLink(w2, None, PiecewiseLinear(0.2))]
    x0 = torch.rand(12, generator=gen, dtype=torch.float64)
    x1 = torch.nn.functional.leaky_relu(w1 @ x0, 0.2)
    x2 = torch.nn.functional.leaky_relu(w2 @ x1, 0.2)
    exact = refine_chain([x0, x1, x2], [1.0, 1.0, 1.0], links)
    torch.testing.assert_close(exact.x, x0, rtol=0, atol=1e-12)
    before, after = [], []
    for seed in range(10):  # equal precisions, equal noise: the layers above add 26 equations on 12 unknowns
        noise = torch.Generator().manual_seed(100 + seed)
        noisy = [v + 1e-4 * torch.randn(v.shape, generator=noise, dtype=torch.float64) for v in (x0, x1, x2)]
        before.append(float((noisy[0] - x0).norm()))
        after.append(float((refine_chain(noisy, [1.0, 1.0, 1.0], links).x - x0).norm()))
    assert sum(after) < 0.8 * sum(before)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_joint_refinement_reaches_the_gradient_matching_optimum_in_closed_form(
    seed, photo_batch, make_update, psnr
):
    model, batch = _mlp(seed), photo_batch(8, 1, seed)
    noisy = GaussianNoise(sigma=1e-3, relative=True, seed=seed)(make_update(model, batch))
    joint = RGAP(rank="off")(model, noisy)
    alone = RGAP(rank="off", chain_refine=False)(model, noisy)
    matched = RGAP(rank="off", chain_refine=False, polish="auto")(model, noisy)  # float64 L-BFGS from the fit
    assert "Gauss-Newton" in joint.layers[0].note and "Gauss-Newton" not in alone.layers[0].note
    # measured: +2.1..2.6 dB over the layer-by-layer fit, and within 0.02 dB of the matching optimum
    assert psnr(joint.inputs, batch.inputs) >= psnr(alone.inputs, batch.inputs) + 1
    assert psnr(joint.inputs, batch.inputs) == pytest.approx(psnr(matched.inputs, batch.inputs), abs=0.3)
