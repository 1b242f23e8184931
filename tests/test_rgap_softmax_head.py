"""R-GAP on a softmax cross-entropy head (C classes, with and without bias): label, scalar root, exact recovery."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rgap_bench.__main__ import main
from rgap_bench.attacks.rgap import RGAP
from rgap_bench.attacks.rgap.softmax_head import gamma_roots, label_candidates
from rgap_bench.errors import InvalidUpdateError, UnsupportedModelError
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.models import build_convnet

MLP = [{"kind": "linear", "out": 24}, {"kind": "linear", "out": 12, "negative_slope": 0.3}]
CONV = [{"kind": "conv", "out": 4, "kernel": 3, "padding": 1}, {"kind": "conv", "out": 4, "kernel": 3, "padding": 1}]
# layer 1 is rank-deficient (136 of 144): its null space is carried into the conv below (the joint solve)
STRIDED = [{"kind": "conv", "out": 4, "kernel": 3, "padding": 1}, {**CONV[1], "stride": 2}]
BODIES = {"mlp": MLP, "conv": CONV, "strided": STRIDED}


def _biased(body: list[dict]) -> list[dict]:
    return [{**layer, "bias": True} for layer in body]


def _head(classes: int = 10, bias: bool = False) -> dict:
    return {"kind": "linear", "out": classes, "activation": "identity", "bias": bias}


def _ce_update(model, batch, share_labels=True, label_policy="flip_prediction"):
    client = FedSGDClient(model, loss="cross_entropy", share_labels=share_labels, label_policy=label_policy)
    return client.compute_update(batch)


def _head_gradient(classes: int, n: int, label: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random head's weight, input and weight gradient from autograd (float64, one sample)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(classes, n, generator=gen, dtype=torch.float64)
    x = torch.rand(n, generator=gen, dtype=torch.float64)
    w = weight.clone().requires_grad_(True)
    F.cross_entropy((w @ x)[None], torch.tensor([label])).backward()
    return weight, x, w.grad


@pytest.mark.parametrize("seed", range(6))
def test_the_label_is_the_row_whose_sign_differs(seed):
    _, _, grad = _head_gradient(10, 7, label=seed, seed=seed)
    assert label_candidates(grad) == [seed]
    _, _, two = _head_gradient(2, 7, label=1, seed=seed)
    assert label_candidates(two) == [0, 1]  # two classes: both rows oppose the other, the recursion decides


@pytest.mark.parametrize("seed", range(6))
def test_the_scalar_root_is_the_clients_error_and_every_bracketed_root_is_found(seed):
    label = seed % 5
    weight, x, grad = _head_gradient(5, 9, label, seed)
    g_true = float(torch.softmax(weight @ x, 0)[label]) - 1.0
    a = grad[label].numpy()
    v = weight.numpy() @ a
    roots = gamma_roots(v, label)
    assert min(abs(r - g_true) for r in roots) < 1e-10 * abs(g_true)
    # brute force: the sign changes of 1 - softmax(v / gamma)_t + gamma on a fine grid of gamma in (-1, 0)
    gammas = -np.logspace(-12, 0, 200_001)[:-1]
    p = np.exp(np.outer(1 / gammas, v) - np.outer(1 / gammas, v).max(1, keepdims=True))
    residual = 1 - p[:, label] / p.sum(1) + gammas
    assert int((np.sign(residual[:-1]) != np.sign(residual[1:])).sum()) == len(roots)


@pytest.mark.parametrize("bias", ["none", "head", "all"])
@pytest.mark.parametrize("body", list(BODIES))
@pytest.mark.parametrize(("share", "policy"), [(True, "flip_prediction"), (False, "true")])
def test_rgap_recovers_input_and_label_exactly(body, bias, share, policy, photo_batch, psnr):
    torch.manual_seed(0)
    layers = _biased(BODIES[body]) if bias == "all" else BODIES[body]
    model = build_convnet([*layers, _head(bias=bias != "none")], in_channels=1, image_size=6)
    if bias == "all":  # biases large enough to matter: a solve that ignored them would be far off
        with torch.no_grad():
            for block in model.blocks:
                block.op.bias.uniform_(-0.5, 0.5)
    batch = photo_batch(image_size=6, channels=1)
    update = _ce_update(model, batch, share_labels=share, label_policy=policy)
    trained = FedSGDClient(model, loss="cross_entropy", label_policy=policy).targets(batch)
    result = RGAP()(model, update)
    assert psnr(result.inputs, batch.inputs) >= 60
    assert result.status == "exact"
    assert int(result.labels[0]) == int(trained[0])


@pytest.mark.parametrize("body", list(BODIES))
def test_biases_below_a_binary_logistic_head_are_inverted_too(body, photo_batch, make_update, psnr):
    torch.manual_seed(0)
    model = build_convnet([*_biased(BODIES[body]), _head(1)], in_channels=1, image_size=6)
    with torch.no_grad():
        for block in model.blocks[:-1]:
            block.op.bias.uniform_(-0.5, 0.5)
    batch = photo_batch(image_size=6, channels=1)
    result = RGAP()(model, make_update(model, batch))
    assert psnr(result.inputs, batch.inputs) >= 60 and result.status == "exact"


def test_a_shared_label_that_disagrees_with_the_gradient_is_refused(photo_batch):
    model = build_convnet([*MLP, _head()], in_channels=1, image_size=6)
    update = _ce_update(model, photo_batch(image_size=6, channels=1))
    wrong = (int(update.metadata.labels[0]) + 1) % 10
    meta = dataclasses.replace(update.metadata, labels=torch.tensor([wrong]))
    with pytest.raises(InvalidUpdateError, match=f"shared label {wrong} disagrees"):
        RGAP()(model, dataclasses.replace(update, metadata=meta))


def test_heads_that_do_not_fit_the_loss_are_named(photo_batch, make_update):
    batch = photo_batch(image_size=6, channels=1)
    multi = build_convnet([*MLP, _head()], in_channels=1, image_size=6)
    logistic = make_update(build_convnet([*MLP, _head(1)], in_channels=1, image_size=6), batch)
    tensors = {name: torch.zeros_like(param) for name, param in multi.named_parameters()}
    with pytest.raises(UnsupportedModelError, match="one logit"):
        RGAP()(multi, dataclasses.replace(logistic, tensors=tensors))
    biased = build_convnet([*MLP, _head(1, bias=True)], in_channels=1, image_size=6)
    tensors = {name: torch.zeros_like(param) for name, param in biased.named_parameters()}
    with pytest.raises(UnsupportedModelError, match="bias-free output layer"):
        RGAP()(biased, dataclasses.replace(logistic, tensors=tensors))
    leaky = build_convnet([*MLP, {"kind": "linear", "out": 10}], in_channels=1, image_size=6)
    with pytest.raises(UnsupportedModelError, match="activation identity"):
        RGAP()(leaky, _ce_update(leaky, batch))


def test_cli_cross_entropy_on_digits_is_exact(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    layers = "[{kind:conv,out:4,kernel:3,padding:1},{kind:linear,out:10,activation:identity,bias:true}]"
    argv = ["rgap_bench", "model=convnet", f"model.layers={layers}", "client.loss=cross_entropy", "data=digits"]
    argv += ["client.share_labels=false", "logger=none", "save_images=false", f"hydra.run.dir={run_dir}"]
    argv += ["hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["attack_status"] == "exact"
    assert metrics["psnr"] >= 60 and metrics["label_acc"] == 1.0


@pytest.mark.parametrize("bias", [False, True])
def test_paper_cnn6_with_ten_outputs_and_cross_entropy_is_exact(bias, photo_batch, psnr):
    """`model.outputs=10 model.bias=...`: the paper's CNN6 body under a softmax head, labels not shared."""
    from rgap_bench.models import cnn6

    torch.manual_seed(0)
    model = cnn6(image_size=16, outputs=10, bias=bias)
    assert model.blocks[-1].op.out_features == 10 and (model.blocks[0].op.bias is not None) == bias
    batch = photo_batch(image_size=16)
    client = FedSGDClient(model, loss="cross_entropy", share_labels=False)
    targets = client.targets(batch)
    rec = RGAP()(model, client.compute_update(batch, targets))
    assert psnr(rec.inputs, batch.inputs) >= 60 and rec.labels.tolist() == targets.tolist()
