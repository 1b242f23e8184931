"""ReLU in R-GAP: a dead output (x = 0) loses its weight row and its k; every solver path honours that, the report
counts what was lost, and H-GAP completes what the closed form leaves open."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from torch import nn

from rgap_bench.__main__ import main
from rgap_bench.attacks.dlg import DLG
from rgap_bench.attacks.hgap import HGAP
from rgap_bench.attacks.rgap import RGAP
from rgap_bench.data.digits import EmbeddedDigits
from rgap_bench.errors import RGapBenchError
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.linalg.activations import Rectifier
from rgap_bench.linalg.constraints import ConvGeometry
from rgap_bench.linalg.operators import ConvSystem
from rgap_bench.models import build_convnet

# conv1's 12 filters give 108 gradient rows per channel for 64 pixels, conv2's 32 give 288 for 64 (stride 2): both
# determined by their gradient rows, whatever dies
DETERMINED_CONV = [
    {"kind": "conv", "out": 12, "kernel": 3, "padding": 1, "activation": "relu", "bias": True},
    {"kind": "conv", "out": 32, "kernel": 3, "stride": 2, "padding": 1, "activation": "relu", "bias": True},
    {"kind": "linear", "out": 10, "activation": "identity", "bias": True},
]
# conv2 (384 unknowns) keeps 128 - dead weight rows and too few gradient rows: rank-deficient
DEFICIENT_CONV = [
    {"kind": "conv", "out": 6, "kernel": 3, "padding": 1, "activation": "relu", "bias": True},
    {"kind": "conv", "out": 8, "kernel": 3, "stride": 2, "padding": 1, "activation": "relu", "bias": True},
    {"kind": "linear", "out": 10, "activation": "identity", "bias": True},
]


def _mlp(image_size: int, hidden: tuple[int, ...], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [{"kind": "linear", "out": h, "activation": "relu", "bias": True} for h in hidden]
    head = {"kind": "linear", "out": 10, "activation": "identity", "bias": True}
    return build_convnet([*layers, head], in_channels=1, image_size=image_size)


def _digit(image_size: int, index: int = 0):
    return EmbeddedDigits(name="digits", image_size=image_size, channels=1, index=index).private_batch(0)


def _attack(model, batch, **options):
    """R-GAP on the cross-entropy gradient of the batch's own (10-class) label; returns (reconstruction, label)."""
    client = FedSGDClient(model, loss="cross_entropy", share_labels=False, label_policy="true")
    targets = client.targets(batch)
    return RGAP(**options)(model, client.compute_update(batch, targets)), targets.tolist()


def _dead_by_forward_pass(model: nn.Module, inputs: torch.Tensor) -> list[tuple[int, int]]:
    """Per hidden block: (outputs with z <= 0, units whose z <= 0 everywhere x the weights of one unit)."""
    counts = []
    h = inputs
    with torch.no_grad():
        for block in model.blocks:
            if isinstance(block.op, nn.Linear):
                h = h.flatten(1)
            z = block.op(h)[0]
            h = block.act(z[None])
            if isinstance(block.act, nn.ReLU):
                silent = int((z.reshape(z.shape[0], -1) <= 0).all(dim=1).sum())
                counts.append((int((z <= 0).sum()), silent * block.op.weight[0].numel()))
    return counts


def test_rectifier_follows_autograd_and_names_near_zero_outputs_dead():
    z = torch.tensor([-2.0, -1e-3, 0.0, 1e-3, 3.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(torch.relu(z).sum(), z)
    assert torch.equal(Rectifier().derivative(z.detach()), grad)  # 0 at z = 0, like the client's gradient
    x = torch.tensor([0.0, 1e-13, -1e-13, 1e-3, 2.0], dtype=torch.float64)
    assert Rectifier().dead(x, 1e-5).tolist() == [True, True, True, False, False]


def test_dense_normal_with_dead_rows_is_the_masked_operator():
    """The dense normal matrix (blocks grouped by padding pattern and mask) equals the matrix-free operator's."""
    gen = torch.Generator().manual_seed(3)
    shape, filters = (2, 5, 5), 3
    weight = torch.randn(filters, 2, 3, 3, dtype=torch.float64, generator=gen)
    geom = ConvGeometry(shape, (3, 3), (1, 1), (1, 1))
    k = torch.randn(filters, 5, 5, dtype=torch.float64, generator=gen)
    alive = torch.rand(filters, 5, 5, generator=gen) > 0.4
    z = torch.randn(filters, 5, 5, dtype=torch.float64, generator=gen)
    system = ConvSystem(weight, k * alive, torch.zeros_like(weight), z, geom, alive=alive)
    n = math.prod(shape)
    columns = [system.normal(e.reshape(shape)).reshape(-1) for e in torch.eye(n, dtype=torch.float64)]
    torch.testing.assert_close(system.dense_normal(), torch.stack(columns, dim=1), rtol=0, atol=1e-12)
    full = ConvSystem(weight, k * alive, torch.zeros_like(weight), z, geom)
    assert not torch.allclose(full.dense_normal(), system.dense_normal())  # the mask did drop rows


def test_mlp_lost_rows_match_a_forward_pass_count():
    model = _mlp(6, (8, 6))
    model.blocks[0].op.bias.data[[0, 3]] = -1e3  # two units of layer 0 dead on any image in [0, 1]
    batch = _digit(6)
    rec, label = _attack(model, batch)
    hand = _dead_by_forward_pass(model, batch.inputs)
    assert hand[0][0] >= 2 and hand[0][1] == hand[0][0] * 36  # a dead unit's gradient row (36 weights) is zero
    assert [(r.dead_rows_dropped, r.zero_gradient_rows) for r in rec.layers] == [*hand, (None, None)]
    assert [r.weight_constraints for r in rec.layers] == [8, 6, 10] and all(r.determined for r in rec.layers)
    assert rec.labels.tolist() == label and rec.status == "exact"


def test_conv_lost_rows_match_a_forward_pass_count(photo_batch):
    torch.manual_seed(0)
    model = build_convnet(DETERMINED_CONV, in_channels=1, image_size=8)
    batch = photo_batch(image_size=8, channels=1)
    rec, _ = _attack(model, batch)
    hand = _dead_by_forward_pass(model, batch.inputs)
    assert all(dead > 0 for dead, _ in hand)
    assert [(r.dead_rows_dropped, r.zero_gradient_rows) for r in rec.layers] == [*hand, (None, None)]


@pytest.mark.parametrize("options", [{}, {"solver": "dense"}, {"solver": "sparse"}, {"solver": "lstsq"}])
def test_relu_mlp_with_biases_is_exact_on_a_digit(options, psnr):
    model = _mlp(12, (40, 20))
    batch = _digit(12, index=1000)
    rec, label = _attack(model, batch, **options)
    assert psnr(rec.inputs, batch.inputs) >= 60 and rec.labels.tolist() == label
    assert rec.layers[0].dead_rows_dropped > 0 and rec.status == "exact"


def test_relu_mlp_on_a_full_size_digit_is_exact(psnr):
    model = _mlp(28, (300, 100))
    batch = _digit(28, index=2000)
    rec, label = _attack(model, batch)
    assert psnr(rec.inputs, batch.inputs) >= 60 and rec.labels.tolist() == label and rec.status == "exact"


@pytest.mark.parametrize(
    "options",
    [{}, {"solver": "iterative"}, {"rank": "exact"}, {"solver": "sparse"}, {"solver": "lstsq"}, {"dtype": "float32"}],
)
def test_small_relu_convnet_that_stays_determined_is_exact(options, photo_batch, psnr):
    torch.manual_seed(0)
    model = build_convnet(DETERMINED_CONV, in_channels=1, image_size=8)
    batch = photo_batch(image_size=8, channels=1)
    rec, label = _attack(model, batch, **options)
    assert psnr(rec.inputs, batch.inputs) >= (40 if options.get("dtype") == "float32" else 60)
    assert rec.labels.tolist() == label and rec.layers[0].dead_rows_dropped > 0


def test_deficient_relu_layer_is_reported_and_hgap_beats_both_parts(photo_batch, psnr):
    torch.manual_seed(0)
    model = build_convnet(DEFICIENT_CONV, in_channels=1, image_size=8)
    batch = photo_batch(image_size=8, channels=1)
    client = FedSGDClient(model, loss="cross_entropy", share_labels=False, label_policy="true")
    update = client.compute_update(batch, client.targets(batch))
    rgap = RGAP()(model, update)
    conv2 = rgap.layers[1]
    assert conv2.dead_rows_dropped > 0 and conv2.determined is False and conv2.rank_deficiency > 0
    assert rgap.status == "approximate"
    conv1 = rgap.layers[0]  # its own system has full rank, but its outputs are conv2's wrong minimum-norm input
    assert conv1.rank_deficiency == 0 and conv1.determined is None and conv1.status == "approximate"
    assert "its outputs come from an undetermined layer above (layer 1)" in conv1.status_reason
    assert rgap.layers[2].determined is True  # the layer above the open one is not touched
    matching = {"max_iterations": 60, "progress": False}  # the same budget for both; at 200 DLG alone gets exact
    dlg = DLG(**matching)(model, update)
    hgap = HGAP(matching=matching)(model, update)
    assert hgap.info["hgap"]["deficient_layers"] == [1]
    scores = {name: psnr(rec.inputs, batch.inputs) for name, rec in (("rgap", rgap), ("dlg", dlg), ("hgap", hgap))}
    assert scores["hgap"] >= max(scores["rgap"], scores["dlg"]), scores


def test_a_linear_layers_bias_gradient_decides_which_units_are_dead(psnr):
    """dL/db = k is exactly 0 at a dead unit: with it, a tolerance that would call live units dead changes nothing."""
    model = _mlp(12, (40, 20))
    batch = _digit(12, index=1000)
    exact, _ = _attack(model, batch)
    loose, _ = _attack(model, batch, relu_dead_tol=0.5)
    assert [r.dead_rows_dropped for r in loose.layers] == [r.dead_rows_dropped for r in exact.layers]
    assert psnr(loose.inputs, batch.inputs) >= 60
    model.blocks[0].op.bias = None  # x alone decides now: half the live units of layer 0 are taken for dead
    client = FedSGDClient(model, loss="cross_entropy", share_labels=False, label_policy="true")
    update = client.compute_update(batch, client.targets(batch))
    loose = RGAP(relu_dead_tol=0.5)(model, update)
    assert loose.layers[0].dead_rows_dropped > _dead_by_forward_pass(model, batch.inputs)[0][0]


def test_cli_run_on_a_relu_convnet_reports_dead_rows(tmp_path, monkeypatch, capsys):
    """`python -m rgap_bench` in this process: layers.json and the console table carry the lost rows."""
    run_dir = tmp_path / "run"
    argv = ["rgap_bench", "model=convnet", "data.image_size=8", "logger=none", "save_images=false"]
    argv += ["model.layers.0.activation=relu", "model.layers.1.activation=relu"]
    argv += [f"hydra.run.dir={run_dir}", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["psnr"] >= 60
    layers = json.loads((run_dir / "layers.json").read_text())["layers"]
    assert [layer["dead_rows_dropped"] is None for layer in layers] == [False, False, True]
    assert layers[0]["dead_rows_dropped"] > 0 and all(layer["determined"] for layer in layers)
    assert "dead" in capsys.readouterr().out


# LeNet's block order, relu(avgpool(conv(x)) + b), at 1x12x12: conv1 12x12 -> 6x6, conv2 6x6 -> 3x3
POOLED = [
    {"kind": "conv", "out": 8, "kernel": 3, "padding": 1, "pool": 2, "activation": "relu", "bias": True},
    {"kind": "conv", "out": 16, "kernel": 3, "padding": 1, "pool": 2, "activation": "relu", "bias": True},
    {"kind": "linear", "out": 10, "activation": "identity", "bias": True},
]


def _pooled_dead_by_forward_pass(model: nn.Module, inputs: torch.Tensor) -> list[tuple[int, int, int]]:
    """Per pooled ReLU conv: (pooled outputs with z <= 0, gradient rows of filters dead at every pooled output,
    outputs of the conv before pooling with z <= 0, which R-GAP must not count)."""
    counts, h = [], inputs
    with torch.no_grad():
        for block in model.blocks[:-1]:
            full = block.op(h)[0]
            z = block.pool(full[None])[0]
            silent = int((z.reshape(z.shape[0], -1) <= 0).all(dim=1).sum())
            counts.append((int((z <= 0).sum()), silent * block.op.weight[0].numel(), int((full <= 0).sum())))
            h = block.act(z[None])
    return counts


@pytest.mark.parametrize(
    ("options", "measured"),
    [({}, True), ({"rank": "exact"}, True), ({"solver": "sparse"}, False), ({"solver": "iterative"}, False),
     ({"solver": "lstsq"}, False)],
)  # fmt: skip
def test_pooled_relu_convnet_drops_the_pooled_dead_rows_and_stays_exact(options, measured, photo_batch, psnr):
    """The activation follows the pooling, so the dead units are pooled outputs: the rows R-GAP drops are counted
    on the pooled pre-activation (not the conv's own), and with both convs still determined recovery is exact.
    Paths that measure no rank leave conv1 (which relies on its weight rows) undecided and the run approximate."""
    torch.manual_seed(0)
    model = build_convnet(POOLED, in_channels=1, image_size=12)
    batch = photo_batch(image_size=12, channels=1)
    rec, label = _attack(model, batch, **options)
    hand = _pooled_dead_by_forward_pass(model, batch.inputs)
    assert all(dead > 0 and silent > 0 and dead != before for dead, silent, before in hand)
    got = [(r.dead_rows_dropped, r.zero_gradient_rows) for r in rec.layers]
    assert got == [(dead, silent) for dead, silent, _ in hand] + [(None, None)]
    assert [r.weight_constraints for r in rec.layers] == [8 * 36, 16 * 9, 10]  # one weight row per pooled output
    assert [r.bias_equations for r in rec.layers] == [8, 16, 10]
    assert [r.determined for r in rec.layers] == [True if measured else None, True, True]
    assert rec.status == ("exact" if measured else "approximate")
    assert psnr(rec.inputs, batch.inputs) >= 60 and rec.labels.tolist() == label


def test_a_pooled_relu_conv_left_deficient_by_its_dead_rows_says_so(photo_batch):
    """Half the filters: conv1's 4 x 9 gradient rows cannot fix 144 pixels and its dead pooled units take weight
    rows away, so the layer is reported open (determined false) and the run approximate, not exact."""
    torch.manual_seed(0)
    narrow = [{**POOLED[0], "out": 4}, {**POOLED[1], "out": 8}, POOLED[2]]
    model = build_convnet(narrow, in_channels=1, image_size=8)
    rec, _ = _attack(model, photo_batch(image_size=8, channels=1))
    conv1 = rec.layers[0]
    assert conv1.dead_rows_dropped > 0 and conv1.rank_deficiency > 0 and conv1.determined is False
    assert rec.status == "approximate"


def test_a_relu_layer_dead_for_the_whole_input_stops_with_a_clear_message():
    """All units of the first hidden layer dead (a bias far below every pre-activation): the layers below carry a zero
    gradient, and R-GAP says so instead of failing on a division by zero."""
    model = _mlp(12, (40, 20))
    with torch.no_grad():
        model.blocks[0].op.bias.fill_(-1e3)
    batch = _digit(12, index=1000)
    with pytest.raises(RGapBenchError, match="every ReLU output of layer 0"):
        _attack(model, batch)
