"""A deficient conv's null space and minimum-norm input by Woodbury over its banded weight rows
(solvers/woodbury.py, used from 8192 unknowns on: CNN6's conv2 at 64x64) agree with the dense factorisation."""

import math

import pytest
import torch

import rgap_bench.attacks.rgap.plan as plan
from rgap_bench.attacks.rgap import RGAP, RGAPLayer, RGAPOptions
from rgap_bench.attacks.rgap.solvers.woodbury import ShiftedInverse
from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.constraints import ConvGeometry
from rgap_bench.linalg.operators import ConvSystem
from rgap_bench.rank import conv_counts

CONV2_NULL = conv_counts((8, 8, 8), 2, (3, 3), (2, 2), (1, 1)).predicted_deficiency  # the toy net's conv2


@pytest.mark.parametrize(("stride", "padding"), [(1, 1), (2, 1), (2, 0)])
def test_the_shifted_inverse_is_the_dense_one(stride, padding):
    gen = torch.Generator().manual_seed(stride + padding)
    geom = ConvGeometry((3, 9, 7), (3, 3), (stride, stride), (padding, padding))
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=gen)
    oh, ow = geom.out_hw
    k, z = (torch.randn(4, oh, ow, dtype=torch.float64, generator=gen) for _ in range(2))
    system = ConvSystem(weight, k, torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=gen), z, geom)
    n = math.prod(geom.in_shape)
    shifted = system.dense_normal().reshape(n, n) + 0.1 * torch.eye(n, dtype=torch.float64)
    rhs = torch.randn(n, 5, dtype=torch.float64, generator=gen)
    inverse = ShiftedInverse(system, 0.1)
    assert inverse.ready
    assert torch.allclose(inverse(rhs), torch.linalg.solve(shifted, rhs), rtol=1e-9, atol=1e-10)


def test_the_woodbury_path_finds_the_dense_paths_null_space(
    monkeypatch, make_update, photo_batch, psnr, deficient_over_surplus
):
    """conv2 of the toy net leaves 340 directions open; found by Woodbury they are carried into conv1 as well as the
    dense path's."""
    model = deficient_over_surplus(0)
    batch = photo_batch(image_size=8, channels=1, index=0)
    update = make_update(model, batch)
    dense = RGAP(rank="auto")(model, update)
    monkeypatch.setattr(plan, "WOODBURY_MIN_UNKNOWNS", 0)
    woodbury = RGAP(rank="auto")(model, update)
    conv1, conv2 = woodbury.layers[:2]
    assert conv2.solver == "woodbury-banded-pinv" and conv2.rank_method == "shift-invert iteration"
    assert conv2.rank_deficiency == dense.layers[1].rank_deficiency == CONV2_NULL
    assert conv1.solver == "joint-null-space" and conv1.joint_rank == dense.layers[0].joint_rank
    assert psnr(woodbury.inputs, batch.inputs) == pytest.approx(psnr(dense.inputs, batch.inputs), abs=0.5)
    # attack.dtype=float32: the system is float32, the Woodbury factors float64, so the count still holds (the
    # dense path factorises the float32 normal matrix, whose rounding hides most of the null space: 149 of 340)
    single = RGAP(rank="auto", dtype="float32")(model, update)
    assert single.layers[1].solver == conv2.solver and single.layers[1].rank_deficiency == CONV2_NULL


@pytest.mark.parametrize(
    ("filters", "image", "expected"), [(36, 33, "symbol"), (36, 32, "woodbury"), (36, 17, "dense"), (300, 33, "dense")]
)
def test_large_convs_with_few_gradient_rows_skip_the_dense_path(monkeypatch, filters, image, expected):
    """A conv with a predicted null space: 12x33x33 in and 3888 weights (CNN6's conv2 at 64x64, full in polyphase
    form) gets its symbol's null space, 12x32x32 (not full: the odd phase overruns the 16-wide grid) Woodbury;
    3468 unknowns (at 32x32) or as many gradient rows as unknowns (300 filters: 32400 > 13068 / 2) keep the dense
    path, and so does rank=exact, the reference."""
    monkeypatch.setattr(RGAPLayer, "predicted_deficiency", lambda self: 72)
    op = torch.nn.Conv2d(12, filters, 3, stride=2, padding=1, bias=False)
    layer = RGAPLayer(1, "blocks.1.op.weight", op, PiecewiseLinear(0.2), (12, image, image), (filters, 1, 1), op.weight)
    assert plan._strategy(layer, True, RGAPOptions(rank="auto")) == expected
    assert plan._strategy(layer, True, RGAPOptions(rank="exact")) == "dense"
