"""`model.init`: default keeps PyTorch's weights, normal gives the paper's N(0, std^2) weights and zero biases."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from rgap_bench.errors import ConfigError
from rgap_bench.models import build_convnet, cnn6, fcn3


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


@pytest.mark.parametrize("build", [cnn6, fcn3])
def test_default_init_is_pytorchs(build) -> None:
    """`default` leaves the weights exactly as a plain build from the same seed (the numbers of every old run)."""
    torch.manual_seed(3)
    plain = build()
    torch.manual_seed(3)
    explicit = build(init="default", init_std=0.5)
    for a, b in zip(_weights(plain), _weights(explicit), strict=True):
        assert torch.equal(a, b)
    # PyTorch's default is Kaiming-uniform: bounded by 1/sqrt(fan_in), so fcn3's first layer is far from N(0, 0.01)
    assert _weights(plain)[0].abs().max() <= 1 / (_weights(plain)[0].shape[1] ** 0.5) + 1e-7


@pytest.mark.parametrize("std", [0.01, 0.05])
def test_normal_init_has_the_asked_std_and_zero_bias(std: float) -> None:
    torch.manual_seed(0)
    model = cnn6(init="normal", init_std=std, bias=True)
    for w in _weights(model):
        assert abs(float(w.std()) - std) < 0.1 * std, w.shape  # >= 432 draws per layer: std within 10 %
        assert abs(float(w.mean())) < 0.1 * std
    biases = [m.bias for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert all(b is not None and not b.any() for b in biases)
    big = fcn3(init="normal", image_size=32, in_channels=3)
    assert abs(float(_weights(big)[0].std()) - 0.01) < 1e-4  # 3 million draws


def test_normal_init_follows_the_seed() -> None:
    torch.manual_seed(1)
    a = fcn3(init="normal")
    torch.manual_seed(1)
    b = fcn3(init="normal")
    torch.manual_seed(2)
    c = fcn3(init="normal")
    assert torch.equal(_weights(a)[0], _weights(b)[0])
    assert not torch.equal(_weights(a)[0], _weights(c)[0])


def test_convnet_takes_the_init_too() -> None:
    torch.manual_seed(0)
    net = build_convnet([{"kind": "conv", "out": 8, "bias": True}, {"kind": "linear", "out": 1}], init="normal")
    w = torch.cat([p.flatten() for p in _weights(net)])
    assert abs(float(w.std()) - 0.01) < 0.001
    assert not net.blocks[0].op.bias.any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"init": "xavier"}, "not an initialisation"), ({"init": "normal", "init_std": 0.0}, "init_std must be")],
)
def test_bad_init_is_a_config_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cnn6(**kwargs)
    with pytest.raises(ConfigError, match=message):
        build_convnet([{"kind": "linear", "out": 1}], **kwargs)


@pytest.mark.parametrize("model", ["cnn6", "cnn6d", "fcn3", "convnet"])
def test_init_composes_and_instantiates(compose_config, model: str) -> None:
    cfg = compose_config(f"model={model}", "model.init=normal", "model.init_std=0.02")
    assert (cfg.model.init, cfg.model.init_std) == ("normal", 0.02)
    torch.manual_seed(0)
    net = instantiate(cfg.model)
    assert abs(float(torch.cat([w.flatten() for w in _weights(net)]).std()) - 0.02) < 0.002
    assert compose_config(f"model={model}").model.init == "default"


def test_unknown_init_fails_when_the_model_is_built(compose_config) -> None:
    cfg = compose_config("model=fcn3", "model.init=uniform")
    with pytest.raises(InstantiationException) as info:
        instantiate(cfg.model)
    assert isinstance(info.value.__cause__, ConfigError)
    assert "choose one of default, normal" in str(info.value.__cause__)
