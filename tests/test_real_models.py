"""R-GAP on models as federated learning trains them: confident softmax heads, pretrained multi-class nets with
biases, and tiny CLI runs through every path of the multi-class / bias / activation extensions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rgap_bench.__main__ import main
from rgap_bench.attacks.rgap import RGAP
from rgap_bench.data.digits import EmbeddedDigits
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.models import build_convnet


def _mlp(bias: bool, hidden: tuple[int, ...] = (32, 16), activation: str = "leaky_relu") -> list[dict]:
    body = [{"kind": "linear", "out": n, "activation": activation, "bias": bias} for n in hidden]
    return [*body, {"kind": "linear", "out": 10, "activation": "identity", "bias": bias}]


def _head_input(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        for block in model.blocks[:-1]:
            inputs = block(inputs)
    return inputs.flatten()


def _confident(model: torch.nn.Module, inputs: torch.Tensor, label: int, margin: float) -> None:
    """Make `label` the prediction with logit margin `margin` over the runner-up: shift its row along the head's
    input, then scale the whole head (a trained net's confidence comes from large logits, not from one row)."""
    head = model.blocks[-1].op
    h = _head_input(model, inputs)
    with torch.no_grad():
        z = model(inputs)[0]
        head.weight[label] += (1.0 + z.max() - z[label]) * h / (h @ h)
        z = model(inputs)[0]
        runner_up = torch.cat([z[:label], z[label + 1 :]]).max()
        head.weight *= margin / float(z[label] - runner_up)
        if head.bias is not None:
            head.bias *= margin / float(z[label] - runner_up)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("margin", [10.0, 17.0, 25.0])
def test_a_confident_prediction_is_recovered_exactly_with_its_label(bias, margin, psnr):
    """A trained net is confident on its own data: 1 - p_t ~ e^-margin. The client computes g_t = p_t - 1 in
    float32, which keeps 3 digits at margin 10, none at 17 (error ~ 1e-7 of 1e-7) and rounds it to 0 at 25:
    the label's row then carries a wrong scale or nothing, and only the other rows tell x and the label."""
    torch.manual_seed(0)
    model = build_convnet(_mlp(bias), in_channels=1, image_size=8)
    batch = EmbeddedDigits(name="digits", image_size=8, channels=1, index=1002).private_batch(0)
    label = int(batch.labels[0])
    _confident(model, batch.inputs, label, margin)
    client = FedSGDClient(model, loss="cross_entropy", share_labels=False, label_policy="true")
    update = client.compute_update(batch)
    head_grad = update.tensors["blocks.2.op.weight"]
    rel_row_error = float((head_grad[label] + head_grad.sum(0) - head_grad[label]).norm() / head_grad[label].norm())
    assert update.metadata.client_loss < 1e-3  # the premise: a confident prediction
    if margin == 25.0:
        assert not bool(head_grad[label].any())  # the label's row rounded away entirely
    elif margin == 17.0:
        assert rel_row_error > 1e-2  # the label's row and the others' sum disagree by more than 1%
    result = RGAP()(model, update)
    assert int(result.labels[0]) == label
    assert result.status == "exact"
    assert psnr(result.inputs, batch.inputs) >= 60


@pytest.mark.parametrize("bias", [False, True])
def test_a_class_whose_probability_underflows_adds_no_equation(bias, psnr):
    """A class 150 logits below the label has p_j = 0 in float32: the client's row for it is zero, and the error
    R-GAP propagates must be zero there too (a tiny float64 p_j would turn the zero row into the equation x = 0)."""
    torch.manual_seed(0)
    model = build_convnet(_mlp(bias), in_channels=1, image_size=8)
    batch = EmbeddedDigits(name="digits", image_size=8, channels=1, index=1002).private_batch(0)
    label, far = int(batch.labels[0]), (int(batch.labels[0]) + 1) % 10
    _confident(model, batch.inputs, label, 10.0)
    h = _head_input(model, batch.inputs)
    with torch.no_grad():
        model.blocks[-1].op.weight[far] -= 150.0 * h / (h @ h)
    update = FedSGDClient(model, loss="cross_entropy", share_labels=False, label_policy="true").compute_update(batch)
    rows = update.tensors["blocks.2.op.weight"]
    assert (~rows.any(dim=1)).nonzero().flatten().tolist() == [far]  # the premise: that row, and only it, is zero
    result = RGAP()(model, update)
    assert int(result.labels[0]) == label and result.status == "exact"
    assert psnr(result.inputs, batch.inputs) >= 60


def test_two_classes_with_a_bias_take_the_label_from_the_negative_entry(photo_batch, psnr):
    """With two classes both rows of dW oppose each other; the bias gradient g itself says which is the label."""
    torch.manual_seed(0)
    layers = [{"kind": "linear", "out": 12, "bias": True}, {"kind": "linear", "out": 2, "activation": "identity"}]
    layers[1]["bias"] = True
    model = build_convnet(layers, in_channels=1, image_size=6)
    labels = []
    for index in range(4):
        batch = photo_batch(image_size=6, channels=1, index=index)
        client = FedSGDClient(model, loss="cross_entropy", share_labels=False)
        targets = client.targets(batch)
        result = RGAP()(model, client.compute_update(batch, targets))
        assert int(result.labels[0]) == int(targets[0])
        assert psnr(result.inputs, batch.inputs) >= 60
        labels.append(int(targets[0]))
    assert set(labels) == {0, 1}  # both labels met


def _cli(run_dir, *overrides: str) -> tuple[dict, list[dict]]:
    """`python -m rgap_bench <overrides>` in this process: metrics.json and layers.json' layers."""
    argv = ["rgap_bench", *overrides, "logger=none", "save_images=false", "print_summary=false"]
    argv += [f"hydra.run.dir={run_dir}", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)
        main()
    layers = json.loads((run_dir / "layers.json").read_text())["layers"]
    return json.loads((run_dir / "metrics.json").read_text()), layers


def _layers(specs: list[dict]) -> str:
    """A `model.layers=` override from layer dicts."""
    return "model.layers=[" + ",".join("{" + ",".join(f"{k}:{v}" for k, v in s.items()) + "}" for s in specs) + "]"


TINY_CONV = [  # model=convnet's default body: every layer determined
    {"kind": "conv", "out": 16, "kernel": 4, "stride": 2, "padding": 1},
    {"kind": "conv", "out": 32, "kernel": 3, "stride": 2, "padding": 1},
]
CE_HEAD = {"kind": "linear", "out": 10, "activation": "identity"}
CLI_CASES = {  # name: (data, layers): issue 14's paths, labels recovered from the gradient (not shared)
    "ce-head": ("photos", [*TINY_CONV, CE_HEAD]),
    "ce-head-biases": ("photos", [{**layer, "bias": True} for layer in [*TINY_CONV, CE_HEAD]]),
    "sigmoid-mlp-biases": ("digits", _mlp(True, (24, 12), "sigmoid")),
    "tanh-mlp-biases": ("digits", _mlp(True, (24, 12), "tanh")),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_runs_of_tiny_real_models_recover_image_and_label(case, tmp_path):
    data, layers = CLI_CASES[case]
    metrics, _ = _cli(tmp_path / "run", "model=convnet", _layers(layers), f"data={data}", "data.image_size=8",
                      "data.index=3", "client.loss=cross_entropy", "client.label_policy=true",
                      "client.share_labels=false")  # fmt: skip
    assert metrics["status"] == "ok"
    assert metrics["label_acc"] == 1.0 and metrics["label_source"] == "inferred"
    assert metrics["psnr"] >= 40


def test_a_pretrained_tiny_mlp_with_biases_is_exact_where_determined(tmp_path):
    """One epoch on the digits makes the head confident; every linear layer is determined, so R-GAP is exact."""
    metrics, layers = _cli(tmp_path / "run", "model=convnet", _layers(_mlp(True)), "data=digits",
                           "data.image_size=8", "data.index=1503", "client.loss=cross_entropy",
                           "client.label_policy=true", "client.share_labels=false", "pretrain.epochs=1",
                           "pretrain.batch_size=50", "pretrain.lr=0.2")  # fmt: skip
    assert metrics["pretrain"]["train_acc_eval"] >= 0.7  # the premise: a trained model, not a random one
    assert [layer["rank_deficiency"] for layer in layers] == [0, 0, 0]
    assert metrics["attack_status"] == "exact"
    assert metrics["psnr"] >= 60 and metrics["label_acc"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("bias", [True, False])
def test_benchmark_script_on_a_pretrained_fcn_is_exact_where_determined(bias, tmp_path):
    """benchmarks/real_models.py as a user runs it: a 196-64-32-10 FCN, with biases and without (the head's scale
    then comes from the softmax equation, the hard case on confident predictions), three epochs on the digits,
    digits 0-4 attacked: every image whose layers R-GAP finds determined comes back exact with its label."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "result.json"
    layers = _layers(_mlp(bias, (64, 32)))
    cmd = [sys.executable, str(root / "benchmarks" / "real_models.py"), "model=convnet", layers, "data=digits",
           "data.image_size=14", "client.loss=cross_entropy", "client.label_policy=true", "client.share_labels=false",
           "pretrain.epochs=3", "--n", "5", "--stride", "501", "--attacks", "rgap", "--json", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(root), "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["pretrain"]["train_acc_eval"] >= 0.8
    images = result["images"]
    assert [row["class"] for row in images] == [0, 1, 2, 3, 4]
    assert all(row["rgap"]["determined"] for row in images)  # linear layers: always determined
    for row in images:
        assert row["rgap"]["label"] == row["label"] and row["rgap"]["psnr"] >= 60, row
    assert "| image | class | label trained |" in proc.stdout
