"""The Fourier-symbol certificate: a proof of full rank from the weight rows of a full (polyphase) convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rgap_bench.attacks.rgap import RGAPOptions
from rgap_bench.attacks.rgap.plan import _full_rank_certificate
from rgap_bench.linalg.constraints import ConvGeometry
from rgap_bench.linalg.symbol import symbol_sigma_bounds

DTYPE = torch.float64

# (channels, filters, size, kernel, stride, padding): full convolutions in polyphase form, CNN6's conv1 first
FULL = [(3, 12, 8, 4, 2, 2), (1, 4, 6, 2, 2, 1), (2, 8, 7, 3, 1, 2), (2, 3, 6, 3, 1, 2), (2, 8, 9, 3, 2, 2)]


def dense_weight_rows(weight: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    c, h, w = geom.in_shape
    eye = torch.eye(c * h * w, dtype=DTYPE).reshape(-1, c, h, w)
    return F.conv2d(eye, weight, stride=geom.stride, padding=geom.padding).reshape(c * h * w, -1).T


@pytest.mark.parametrize("case", FULL)
def test_symbol_bounds_enclose_the_dense_singular_values(case):
    c, f, size, k, s, p = case
    geom = ConvGeometry((c, size, size), (k, k), (s, s), (p, p))
    weight = torch.randn(f, c, k, k, dtype=DTYPE, generator=torch.Generator().manual_seed(sum(case)))
    low, high = symbol_sigma_bounds(weight, geom)
    sv = torch.linalg.svdvals(dense_weight_rows(weight, geom))
    assert 0 < low <= float(sv[-1]) and float(sv[0]) <= high


def test_a_padding_below_full_or_a_wide_symbol_proves_nothing():
    weight = torch.randn(8, 2, 3, 3, dtype=DTYPE)
    assert symbol_sigma_bounds(weight, ConvGeometry((2, 7, 7), (3, 3), (1, 1), (1, 1))) is None  # 'same' padding
    # 3 filters on 4 polyphase channels (1 channel, stride 2): the symbol is wide
    assert (
        symbol_sigma_bounds(torch.randn(3, 1, 2, 2, dtype=DTYPE), ConvGeometry((1, 6, 6), (2, 2), (2, 2), (1, 1)))
        is None
    )


def test_a_rank_deficient_full_conv_is_not_certified():
    """Four filters on four polyphase channels, the last the sum of two others: W has a null space."""
    weight = torch.randn(4, 1, 2, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    weight[3] = weight[0] + weight[1]
    geom = ConvGeometry((1, 6, 6), (2, 2), (2, 2), (1, 1))
    sv = torch.linalg.svdvals(dense_weight_rows(weight, geom))
    assert float(sv[-1]) < 1e-12 * float(sv[0])  # the dense rank is deficient
    low, _ = symbol_sigma_bounds(weight, geom)
    assert low <= float(sv[-1]) + 1e-15


def test_the_scaled_system_bound_is_below_its_spectrum_and_proves_cnn6_conv1_geometry(make_conv_system):
    system, _ = make_conv_system((3, 16, 16), 12, (4, 4), (2, 2), (2, 2))  # CNN6's conv1 at 16x16: K is wide
    assert system.full_rank_bound() is None
    eig = torch.linalg.eigvalsh(system.dense_normal())
    bound = system.symbol_bound()
    assert bound is not None and 0 < bound <= float(eig[0] / eig[-1])
    assert _full_rank_certificate(system, RGAPOptions()) == (bound, "weight-row symbol bound")
    assert _full_rank_certificate(system, RGAPOptions(rank="exact")) is None


def test_dropped_weight_rows_void_the_symbol_bound(make_conv_system):
    system, _ = make_conv_system((3, 8, 8), 12, (4, 4), (2, 2), (2, 2))
    alive = torch.ones(system.k.shape, dtype=torch.bool)
    alive[0, 0, 0] = False
    system.alive = alive
    assert system.symbol_bound() is None


def test_cnn6_conv1_is_proven_by_its_symbol_and_the_dense_rank_agrees(make_update, photo_batch):
    from rgap_bench.attacks.rgap import RGAP
    from rgap_bench.models import cnn6

    torch.manual_seed(0)
    model = cnn6(image_size=16)
    update = make_update(model, photo_batch(image_size=16))
    auto, exact = RGAP(rank="auto")(model, update), RGAP(rank="exact")(model, update)
    conv1 = auto.layers[0]
    assert conv1.rank_method == "weight-row symbol bound" and "Fourier symbol" in conv1.note
    assert conv1.rank == exact.layers[0].rank == conv1.unknowns and exact.layers[0].solver.startswith("dense")


def test_the_weight_row_start_solves_a_consistent_full_conv_and_pcg_keeps_the_least_squares_solution(
    make_conv_system,
):
    from rgap_bench.linalg.operators import BlockJacobi
    from rgap_bench.linalg.pcg import pcg

    system, x = make_conv_system((3, 16, 16), 12, (4, 4), (2, 2), (2, 2))  # CNN6's conv1 geometry at 16x16
    x0 = system.weight_row_start()
    assert torch.allclose(x0, x, atol=1e-10)
    system.z = system.z + 1e-3 * torch.randn(system.z.shape, dtype=DTYPE)  # inconsistent: the start is not the LS
    start = system.weight_row_start()
    cold = pcg(system.normal, system.normal_rhs(), BlockJacobi(system), tol=1e-12, max_iter=3000)
    warm = pcg(system.normal, system.normal_rhs(), BlockJacobi(system), tol=1e-12, max_iter=3000, x0=start)
    assert not torch.allclose(start, cold.x, atol=1e-6)
    assert torch.allclose(warm.x, cold.x, atol=1e-9)
    same, _ = make_conv_system((2, 7, 7), 8, (3, 3), (1, 1), (1, 1))  # 'same' padding: not a full conv
    assert same.weight_row_start() is None


def test_a_symbol_too_large_to_pay_is_not_evaluated(monkeypatch):
    import rgap_bench.linalg.symbol as symbol

    geom = ConvGeometry((3, 8, 8), (4, 4), (2, 2), (2, 2))
    weight = torch.randn(12, 3, 4, 4, dtype=DTYPE)
    z = F.conv2d(torch.randn(1, 3, 8, 8, dtype=DTYPE), weight, stride=2, padding=2)[0]
    assert symbol.symbol_sigma_bounds(weight, geom) is not None and symbol.full_conv_solve(weight, geom, z) is not None
    monkeypatch.setattr(symbol, "MAX_SYMBOL_WORK", 25 * 12**3 - 1)  # 5x5 grid frequencies, 12 x 12 symbols
    assert symbol.symbol_sigma_bounds(weight, geom) is None and symbol.full_conv_solve(weight, geom, z) is None


def test_the_norm_bound_of_a_conv_full_in_every_phase_is_above_its_largest_singular_value():
    from rgap_bench.linalg.symbol import symbol_norm_bound

    geom = ConvGeometry((4, 9, 9), (3, 3), (2, 2), (1, 1))  # CNN6's conv2: each phase full by its own taps
    weight = torch.randn(12, 4, 3, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    top = float(torch.linalg.svdvals(dense_weight_rows(weight, geom))[0])
    assert top <= symbol_norm_bound(weight, geom) <= 1.5 * top
    assert symbol_norm_bound(weight, ConvGeometry((4, 9, 9), (3, 3), (1, 1), (1, 1))) is None  # 'same' padding
