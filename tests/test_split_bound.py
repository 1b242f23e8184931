"""The phase-split certificate: gradient rows on the pixel phases they determine, the weight rows' symbol on the rest
(CNN6's conv2 geometry, k3 s2 p1, whose K is rank deficient)."""

from __future__ import annotations

import pytest
import torch

from rgap_bench.attacks.rgap import RGAPOptions
from rgap_bench.attacks.rgap.plan import _full_rank_certificate
from rgap_bench.linalg.split_bound import phase_split_bound

CONV2 = [((4, 9, 9), 12, (3, 3), (2, 2), (1, 1)), ((2, 7, 7), 6, (3, 3), (2, 2), (1, 1))]


@pytest.mark.parametrize("case", CONV2)
def test_the_split_bound_proves_a_layer_whose_gradient_rows_are_rank_deficient(case, make_conv_system):
    system, _ = make_conv_system(*case)
    kmat = system.channel_matrix()
    assert int(torch.linalg.matrix_rank(kmat)) < kmat.shape[1] and system.full_rank_bound() == 0.0
    eig = torch.linalg.eigvalsh(system.dense_normal())
    bound = phase_split_bound(system)
    assert bound is not None and RGAPOptions().rcond < bound <= float(eig[0] / eig[-1])
    assert _full_rank_certificate(system, RGAPOptions()) == (bound, "phase-split bound")


def test_open_phases_the_weight_rows_do_not_close_are_not_certified(make_conv_system):
    """The centre taps alone see the even-even pixels; with channel 0's centre taps zero, those pixels of channel 0
    are seen only by the gradient rows, which leave them open: the layer is rank deficient."""
    system, _ = make_conv_system((4, 9, 9), 12, (3, 3), (2, 2), (1, 1))
    system.weight[:, 0, 1, 1] = 0.0
    system.__post_init__()  # the row scales follow the new weights
    eig = torch.linalg.eigvalsh(system.dense_normal())
    assert float(eig[0]) < 1e-12 * float(eig[-1])
    bound = phase_split_bound(system)
    assert bound is None or bound <= 1e-14
    assert _full_rank_certificate(system, RGAPOptions()) is None


def test_no_weight_rows_or_no_open_phase_gives_no_split_bound(make_conv_system):
    tall, _ = make_conv_system((3, 5, 5), 8, (3, 3), (1, 1), (1, 1))  # stride 1, K full column rank: nothing open
    assert phase_split_bound(tall) is None
    system, _ = make_conv_system((4, 9, 9), 12, (3, 3), (2, 2), (1, 1))
    system.z = None
    assert phase_split_bound(system) is None


def test_cnn6_32_gets_a_proven_rank_for_every_conv_layer_without_the_probe(make_update, photo_batch, monkeypatch):
    import rgap_bench.attacks.rgap.solvers as solvers
    from rgap_bench.attacks.rgap import RGAP
    from rgap_bench.models import cnn6

    def no_probe(*args, **kwargs):
        raise AssertionError("the Krylov probe was called")

    monkeypatch.setitem(solvers.STRATEGIES, "krylov", no_probe)
    torch.manual_seed(0)
    model = cnn6(image_size=32)
    rec = RGAP()(model, make_update(model, photo_batch(image_size=32)))
    methods = [layer.rank_method for layer in rec.layers[:-1]]
    assert methods[:2] == ["weight-row symbol bound", "phase-split bound"]
    assert set(methods[2:]) == {"gradient-row bound"}
    assert all(layer.rank == layer.unknowns and layer.status == "exact" for layer in rec.layers)
