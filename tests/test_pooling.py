"""Average pooling as a fixed linear layer, and bias equations: operators vs autograd, counts vs hand counts,
exact recovery through pooled nets, the presets that use both."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from rgap_bench.__main__ import main
from rgap_bench.attacks.rgap import RGAP, read_layers
from rgap_bench.attacks.rgap.layers import back_propagate, bias_equations
from rgap_bench.errors import ConfigError, UnsupportedModelError
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.linalg.constraints import ConvGeometry
from rgap_bench.linalg.operators import ConvSystem
from rgap_bench.models import build_convnet
from rgap_bench.models.checks import check_model
from rgap_bench.models.layers import Block, SequentialNet
from rgap_bench.rank import analyse_model, conv_counts

D = torch.float64
# (channels, size, filters, kernel, stride, padding, pool): odd sizes leave rows/columns the floor of the pooling drops
GEOMETRIES = [(2, 9, 3, 3, 1, 1, 2), (1, 11, 2, 4, 2, 2, 2), (2, 10, 3, 3, 1, 0, 3)]


def _pooled_case(c, size, filters, kernel, stride, padding, pool, seed=0):
    """A pooled conv's true input, pooled pre-activation, pooled error and weight gradient (autograd)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(filters, c, kernel, kernel, dtype=D, generator=gen, requires_grad=True)
    x = torch.randn(c, size, size, dtype=D, generator=gen)
    z = F.avg_pool2d(F.conv2d(x[None], weight, stride=stride, padding=padding), pool)[0]
    k = torch.randn(z.shape, dtype=D, generator=gen)
    (grad,) = torch.autograd.grad((z * k).sum(), weight)
    geom = ConvGeometry((c, size, size), (kernel, kernel), (stride, stride), (padding, padding))
    return weight.detach(), x, z.detach(), k, grad, geom


@pytest.mark.parametrize("case", GEOMETRIES)
@pytest.mark.parametrize("scale_rows", [False, True])
def test_pooled_conv_rows_equal_autograd_and_their_adjoints(case, scale_rows):
    weight, x, z, k, grad, geom = _pooled_case(*case)
    system = ConvSystem(weight, k, grad, z, geom, scale_rows, pool=case[-1])
    if not scale_rows:
        torch.testing.assert_close(system.weight_rows(x), z)
        torch.testing.assert_close(system.grad_rows(x), grad)
    assert system.residual_rel(x) < 1e-12
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(x.shape, dtype=D, generator=gen)
    y, v = torch.randn(z.shape, dtype=D, generator=gen), torch.randn(grad.shape, dtype=D, generator=gen)
    torch.testing.assert_close((system.weight_rows(u) * y).sum(), (u * system.weight_rows_adjoint(y)).sum())
    torch.testing.assert_close((system.grad_rows(u) * v).sum(), (u * system.grad_rows_adjoint(v)).sum())
    torch.testing.assert_close(system.dense_normal() @ u.reshape(-1), system.normal(u).reshape(-1))
    gram = system.channel_matrix().T @ system.channel_matrix()
    weight_part = torch.diagonal(system.dense_normal()) - torch.diagonal(torch.block_diag(*[gram] * case[0]))
    torch.testing.assert_close(weight_part, system.weight_diagonal().reshape(-1))


def _pooled_net(layers, channels, size, seed=0):
    torch.manual_seed(seed)
    return build_convnet(layers, in_channels=channels, image_size=size)


PADDED = [  # every layer determined on its own: pooled convs with padding
    {"kind": "conv", "out": 4, "kernel": 3, "padding": 1, "pool": 2, "bias": True},
    {"kind": "conv", "out": 8, "kernel": 3, "padding": 1, "pool": 2, "bias": True},
    {"kind": "linear", "out": 10, "activation": "identity", "bias": True},
]
LENET_LIKE = [  # LeNet's shape: the unpadded pooled conv2 is deficient, its padded pooled conv1 absorbs that
    {"kind": "conv", "out": 4, "kernel": 3, "padding": 1, "pool": 2, "bias": True},
    {"kind": "conv", "out": 6, "kernel": 3, "pool": 2, "bias": True},
    {"kind": "linear", "out": 10, "activation": "identity", "bias": True},
]


def _attack(model, batch, **options):
    client = FedSGDClient(model, loss="cross_entropy", share_labels=False)
    targets = client.targets(batch)
    update = client.compute_update(batch, targets)
    return RGAP(**options)(model, update), targets, update


def _double_batch(photo_batch, size):
    batch = photo_batch(image_size=size, channels=1)
    return dataclasses.replace(batch, inputs=batch.inputs.double())


def test_back_propagate_through_a_pooled_layer_equals_autograd(photo_batch):
    model = _pooled_net(PADDED, 1, 8).double()
    batch = _double_batch(photo_batch, 8)
    h0 = model.blocks[0](batch.inputs).detach().requires_grad_(True)
    z1 = model.blocks[1].pool(model.blocks[1].op(h0))
    k1 = torch.randn(z1.shape, dtype=D)
    (expected,) = torch.autograd.grad((z1 * k1).sum(), h0)
    update = FedSGDClient(model, loss="cross_entropy").compute_update(batch)
    upper = read_layers(model, update, D)[1]
    torch.testing.assert_close(back_propagate(upper, k1[0], D), expected[0])


@pytest.mark.parametrize("solver", ["auto", "iterative", "sparse"])
def test_rgap_is_exact_through_a_pooled_leaky_relu_convnet(solver, photo_batch, psnr):
    model = _pooled_net(PADDED, 1, 8)
    assert analyse_model(model).ra_index == 0
    batch = photo_batch(image_size=8, channels=1)
    rec, targets, _ = _attack(model, batch, solver=solver, rank="exact" if solver == "auto" else "auto")
    assert psnr(rec.inputs, batch.inputs) >= 60 and rec.labels.tolist() == targets.tolist()
    assert [layer.layer.endswith("avgpool2") for layer in rec.layers] == [True, True, False]
    if solver == "auto":
        assert rec.status == "exact"


def test_a_deficient_pooled_conv_hands_its_null_space_to_the_pooled_conv_below(photo_batch):
    """Unpadded, a stride-1 conv followed by 2x2 pooling only sees its input through the 2x2 box filter: it leaves
    C (H + W - 1) directions free (here 4 x 11), and the pooled conv below takes them into its joint solve."""
    rec, targets, _ = _attack(_pooled_net(LENET_LIKE, 1, 12), photo_batch(image_size=12, channels=1))
    assert rec.layers[1].rank_deficiency == 4 * 11 and rec.layers[0].solver == "joint-null-space"
    assert rec.labels.tolist() == targets.tolist()


LENET_LEAKY = [
    {"kind": "conv", "out": 6, "kernel": 5, "padding": 2, "pool": 2, "bias": True},
    {"kind": "conv", "out": 16, "kernel": 5, "pool": 2, "bias": True},
    {"kind": "linear", "out": 120, "bias": True},
    {"kind": "linear", "out": 84, "bias": True},
    {"kind": "linear", "out": 10, "activation": "identity", "bias": True},
]


@pytest.mark.slow
def test_rgap_is_exact_on_the_lenet5_architecture_with_leaky_relu_at_28x28(photo_batch, psnr):
    """conv2 (unpadded, pooled) leaves 6 x 27 = 162 directions free; conv1's 1176 pooled weight rows absorb them in
    the joint solve (about a minute on two cores)."""
    model = _pooled_net(LENET_LEAKY, 1, 28)
    batch = photo_batch(image_size=28, channels=1)
    rec, targets, _ = _attack(model, batch)
    assert rec.layers[1].rank_deficiency == 162 and rec.layers[0].solver == "joint-null-space"
    assert psnr(rec.inputs, batch.inputs) >= 50 and rec.labels.tolist() == targets.tolist()
    assert rec.status == "exact"


def test_bias_equations_match_autograd_and_give_a_linear_layer_its_error(photo_batch):
    model = _pooled_net(PADDED, 1, 8).double()
    batch = _double_batch(photo_batch, 8)
    client = FedSGDClient(model, loss="cross_entropy")
    update = client.compute_update(batch)
    layers = read_layers(model, update, D)
    zs = []
    h = batch.inputs.double()
    for block in model.blocks:
        h = h.flatten(1) if isinstance(block.op, nn.Linear) else h
        z = block.pool(block.op(h))
        z.retain_grad()
        zs.append(z)
        h = block.act(z)
    client.loss(h, client.targets(batch)).backward()
    for layer, z in zip(layers, zs, strict=True):
        k_true = z.grad[0].detach()
        k, check = bias_equations(layer, k_true)
        assert check.equations == layer.op.weight.shape[0] and check.residual_rel < 1e-12
        torch.testing.assert_close(k, k_true)
        wrong, off = bias_equations(layer, 2 * k_true)
        assert off.residual_rel == pytest.approx(1.0)
        expected = k_true if layer.is_conv else 2 * k_true - k_true  # a linear layer takes db = k_true
        torch.testing.assert_close(wrong, 2 * k_true if layer.is_conv else expected)


def test_layers_json_reports_bias_equations(photo_batch):
    rec, _, _ = _attack(_pooled_net(PADDED, 1, 8), photo_batch(image_size=8, channels=1))
    rows = [layer.as_dict() for layer in rec.layers]
    assert [row["bias_equations"] for row in rows] == [4, 8, 10]
    assert all(row["bias_residual_rel"] < 1e-5 for row in rows)  # the client's float32 gradient


def test_rank_counts_of_a_pooled_conv_match_a_hand_count():
    # 1x8x8, 2 filters 3x3 padding 1, pool 2, bias: 2*1*9 gradient rows, 2*4*4 pooled weight rows, 2 bias equations
    counts = conv_counts((1, 8, 8), 2, (3, 3), (1, 1), (1, 1), pool=2, bias=True)
    assert (counts.unknowns, counts.gradient_constraints, counts.weight_constraints) == (64, 18, 32)
    assert counts.bias_equations == 2 and not counts.sharp
    # unpadded stride-1 conv + 2x2 pool on 2x6x6 with 8 filters: every row is seen through the 2x2 box filter,
    # so at most C * 5 * 5 = 50 of the 72 unknowns are determined; the bound stays an upper bound
    model = build_convnet(
        [{"kind": "conv", "out": 8, "kernel": 3, "pool": 2, "bias": True}, {"kind": "linear", "out": 2}],
        in_channels=2,
        image_size=6,
    )
    row = analyse_model(model).layers[0]
    assert (row.unknowns, row.weight_constraints, row.bias_equations, row.rank) == (72, 32, 8, 50)
    assert row.bound >= row.rank and row.layer == "conv 2>8 k3 s1 p0 avgpool2"


def test_check_model_refuses_what_is_not_average_pooling_before_an_invertible_activation():
    conv = nn.Conv2d(1, 2, 3)
    head = Block(nn.Linear(2 * 6 * 6, 1), nn.Identity())
    cases = [
        (
            Block(conv, nn.LeakyReLU(0.2), nn.MaxPool2d(2)),
            r"layer 0 \(Conv2d\): MaxPool2d is not supported by R-GAP: max pooling",
        ),
        (Block(conv, nn.LeakyReLU(0.2), nn.AvgPool2d(2, stride=1)), "kernel = stride"),
        (Block(conv, nn.BatchNorm2d(2)), "batch norm in train mode"),
        (Block(conv, nn.Dropout()), "active dropout"),
    ]
    for block, message in cases:
        features = block.eval()(torch.zeros(1, 1, 14, 14)).numel()
        model = SequentialNet("bad", (1, 14, 14), [block, Block(nn.Linear(features, 1), nn.Identity())])
        with pytest.raises(UnsupportedModelError, match=message) as info:
            check_model(model)
        assert "attack=ig" in str(info.value)
    good = SequentialNet("ok", (1, 14, 14), [Block(conv, nn.LeakyReLU(0.2), 2), head])
    assert [b.pool for b in check_model(good)] == [2, 1] and check_model(good)[0].out_shape == (2, 6, 6)


def test_pool_is_for_conv_layers_and_must_fit():
    with pytest.raises(ConfigError, match="conv layers only"):
        build_convnet([{"kind": "linear", "out": 2, "pool": 2}], in_channels=1, image_size=4)
    with pytest.raises(ConfigError, match="pool 4 is larger"):
        build_convnet(
            [{"kind": "conv", "out": 2, "pool": 4}, {"kind": "linear", "out": 1}], in_channels=1, image_size=4
        )


@pytest.mark.parametrize(
    ("preset", "data", "shapes"),
    [
        ("lenet5", "digits", [(1, 28, 28), (6, 14, 14), (16, 5, 5), (120,), (84,)]),
        ("cifar_cnn", "photos", [(3, 32, 32), (16, 16, 16), (32, 8, 8), (64, 4, 4), (128,)]),
    ],
)
def test_presets_compose_with_biases_pooling_and_ten_classes(preset, data, shapes, compose_config):
    cfg = compose_config(f"model={preset}", f"data={data}", "client.loss=cross_entropy")
    model = instantiate(cfg.model)
    assert model.block_input_shapes == shapes and model(torch.zeros(1, *shapes[0])).shape == (1, 10)
    assert all(block.op.bias is not None for block in model.blocks)
    assert all(isinstance(block.act, nn.ReLU) for block in model.blocks[:-1])
    blocks = check_model(model)  # R-GAP walks it: ReLU (dead units drop their rows) after average pooling
    assert [block.slope for block in blocks[:-1]] == [0.0] * (len(blocks) - 1)
    assert [block.pool for block in blocks] == [2, 2, 1, 1, 1] if preset == "lenet5" else [2, 2, 2, 1, 1]


def _run(tmp_path, monkeypatch, *overrides):
    run_dir = tmp_path / "run"
    argv = ["rgap_bench", *overrides, "logger=none", "save_images=false", f"hydra.run.dir={run_dir}"]
    monkeypatch.setattr(sys, "argv", [*argv, "hydra/job_logging=none", "hydra/hydra_logging=none"])
    main()
    return json.loads((run_dir / "metrics.json").read_text()), run_dir


LEAKY = [f"model.layers.{i}.activation=leaky_relu" for i in range(4)]


@pytest.mark.parametrize(("preset", "data"), [("lenet5", "digits"), ("cifar_cnn", "photos")])
def test_cli_presets_run_with_a_matching_attack(preset, data, tmp_path, monkeypatch):
    metrics, _ = _run(
        tmp_path, monkeypatch, f"model={preset}", f"data={data}", "client.loss=cross_entropy", "attack=dlg",
        "attack.max_iterations=2",
    )  # fmt: skip
    assert metrics["status"] == "ok" and metrics["run"]["model"] == preset


@pytest.mark.slow
def test_cli_rgap_on_the_lenet5_preset_with_leaky_relu(tmp_path, monkeypatch):
    """The LeNet-5 preset with every ReLU overridden to LeakyReLU, on a digit (about a minute on two cores)."""
    metrics, run_dir = _run(
        tmp_path, monkeypatch, "model=lenet5", "data=digits", "client.loss=cross_entropy", *LEAKY
    )  # fmt: skip
    assert metrics["status"] == "ok" and metrics["psnr"] >= 40
    layers = json.loads((run_dir / "layers.json").read_text())["layers"]
    assert [layer["bias_equations"] for layer in layers] == [6, 16, 120, 84, 10]
