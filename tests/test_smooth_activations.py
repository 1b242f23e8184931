"""Sigmoid and tanh are invertible: R-GAP undoes them like LeakyReLU, with their own inverse and derivative."""

from __future__ import annotations

import pytest
import torch

from rgap_bench.attacks.rgap import RGAP
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.linalg.activations import Smooth
from rgap_bench.models import build_convnet


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_inverse_and_derivative_match_torch(name):
    z = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    x = getattr(torch, name)(z)
    act = Smooth(name)
    torch.testing.assert_close(act.inverse(x.detach()), z.detach(), rtol=1e-9, atol=1e-9)
    (grad,) = torch.autograd.grad(x.sum(), z)
    torch.testing.assert_close(act.derivative(z.detach()), grad)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
@pytest.mark.parametrize("body", ["mlp", "conv"])
def test_rgap_is_exact_through_smooth_activations(name, body, photo_batch, psnr):
    torch.manual_seed(0)
    hidden = (
        [{"kind": "linear", "out": 80, "activation": name, "bias": True}]
        if body == "mlp"
        else [{"kind": "conv", "out": 4, "kernel": 3, "padding": 1, "activation": name, "bias": True}]
    )
    layers = [*hidden, {"kind": "linear", "out": 10, "activation": "identity", "bias": True}]
    model = build_convnet(layers, in_channels=1, image_size=6)
    batch = photo_batch(image_size=6, channels=1)
    client = FedSGDClient(model, loss="cross_entropy", share_labels=False)
    targets = client.targets(batch)
    rec = RGAP()(model, client.compute_update(batch, targets))
    assert psnr(rec.inputs, batch.inputs) >= 60 and rec.labels.tolist() == targets.tolist()
    assert rec.status == "exact"
