import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rgap_bench.metrics import METRICS_SPEC, label_accuracy, reconstruction_metrics


def _images(b: int = 4, c: int = 3, h: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, h, h, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference_ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Textbook SSIM (Wang et al. 2004); borders reflect-padded, map averaged over C x H x W per image."""
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        pad = (window - 1) // 2
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), kernel, groups=x.shape[1])

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return ssim_map.flatten(1).mean(1)


def test_identical_images_are_exact_and_capped():
    x = _images()
    m = reconstruction_metrics(x.clone(), x)
    assert m["mse"] == 0.0
    assert m["psnr"] == 100.0
    assert m["ssim"] == pytest.approx(1.0, abs=1e-9)
    assert m["exact_rate"] == 1.0
    assert m["assignment"] == [0, 1, 2, 3]
    assert all(row["psnr"] == 100.0 for row in m["per_image"])


def test_constant_offset_gives_known_mse_and_psnr():
    x = torch.full((2, 3, 16, 16), 0.5, dtype=torch.float64)
    x[1] = 0.3
    m = reconstruction_metrics(x + 0.1, x)
    assert m["mse"] == pytest.approx(0.01, rel=1e-12)
    assert m["psnr"] == pytest.approx(20.0, rel=1e-12)
    assert m["exact_rate"] == 0.0
    assert [row["mse"] for row in m["per_image"]] == pytest.approx([0.01, 0.01], rel=1e-12)


def test_clamping_versus_unclamped_mse():
    x = torch.ones(1, 1, 12, 12)
    m = reconstruction_metrics(torch.full_like(x, 1.5), x)
    assert m["mse"] == 0.0
    assert m["mse_unclamped"] == pytest.approx(0.25)
    assert m["psnr"] == 100.0


def test_hungarian_matching_recovers_permutation():
    x = _images(4)
    perm = [2, 0, 3, 1]
    noisy = x[perm] + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    m = reconstruction_metrics(noisy, x)
    assert m["assignment"] == perm
    assert m["psnr"] > 35.0
    assert [row["original"] for row in m["per_image"]] == perm


def test_matching_is_one_to_one_not_best_match():
    x = torch.stack([torch.zeros(1, 8, 8), torch.full((1, 8, 8), 0.2)]).double()
    recon = torch.stack([torch.full((1, 8, 8), 0.05), torch.full((1, 8, 8), 0.04)]).double()
    m = reconstruction_metrics(recon, x)
    assert sorted(m["assignment"]) == [0, 1]
    assert m["assignment"] == [1, 0]  # total cost 0.0225 + 0.0016 beats 0.0025 + 0.0256


def test_combined_reconstruction_scored_against_batch_mean():
    x = _images(4)
    mean = x.mean(0, keepdim=True)
    m = reconstruction_metrics(mean.clone(), x, combined=True)
    assert m["combined"] is True
    assert m["assignment"] is None
    assert m["psnr"] == 100.0
    assert m["per_image"][0]["original"] == "mean"
    m_first = reconstruction_metrics(x[:1], x, combined=True)
    assert m_first["mse"] == pytest.approx(float((x[0] - mean[0]).pow(2).mean()))
    with pytest.raises(ValueError):
        reconstruction_metrics(x[:2], x, combined=True)


def test_ssim_matches_textbook_formula():
    x = _images(3, seed=2)
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)).clamp(0, 1)
    m = reconstruction_metrics(y, x)
    assert m["assignment"] == [0, 1, 2]
    expected = _reference_ssim(y, x)
    assert [row["ssim"] for row in m["per_image"]] == pytest.approx(expected.tolist(), abs=1e-6)
    assert m["ssim"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert 0.0 < m["ssim"] < 0.99


def test_small_images_shrink_ssim_window_and_record_it():
    x = _images(2, c=1, h=8, seed=4)
    y = (x + 0.05).clamp(0, 1)
    m = reconstruction_metrics(y, x)
    assert m["ssim_window"] == 7
    assert m["ssim_sigma"] == pytest.approx(6 / 7)
    assert math.isfinite(m["ssim"])
    expected = _reference_ssim(y[m["assignment"]], x[m["assignment"]], window=7, sigma=6 / 7)
    assert m["ssim"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert reconstruction_metrics(x, x)["ssim"] == pytest.approx(1.0)


def test_output_is_json_safe():
    x = _images(2)
    m = reconstruction_metrics(x.clone(), x)
    text = json.dumps({"metrics": m, "spec": METRICS_SPEC}, allow_nan=False)
    assert "Infinity" not in text
    assert METRICS_SPEC["psnr"]["cap_db"] == 100.0
    assert METRICS_SPEC["exact_threshold_psnr_db"] == 40.0
    assert METRICS_SPEC["ssim"]["window"] == 11


def test_label_accuracy_with_assignment():
    true = torch.tensor([0, 1, 1, 0])
    assert label_accuracy(torch.tensor([0, 1, 0, 0]), true) == 0.75
    assert label_accuracy(torch.tensor([1, 0, 0, 1]), true, assignment=[1, 0, 3, 2]) == 1.0
    with pytest.raises(ValueError):
        label_accuracy(torch.tensor([0, 1]), true)


def test_the_spec_document_exists_and_states_the_pinned_numbers():
    document = Path(__file__).resolve().parents[1] / METRICS_SPEC["document"]
    text = document.read_text()
    for fact in ("100 dB", "40 dB", "11 pixels", "sigma 1.5", "linear_sum_assignment", "(w - 1) / 7"):
        assert fact in text, fact
