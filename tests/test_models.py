import pytest
import torch
from torch import nn

from rgap_bench.errors import ConfigError
from rgap_bench.models import build_convnet, cnn6, cnn6d, fcn3


@pytest.mark.parametrize(
    ("builder", "channels", "size", "shapes"),
    [
        (
            cnn6,
            3,
            32,
            [(3, 32, 32), (12, 17, 17), (36, 9, 9), (36, 9, 9), (36, 9, 9), (64, 5, 5), (128, 5, 5)],
        ),
        (
            cnn6d,
            3,
            32,
            [(3, 32, 32), (12, 17, 17), (20, 9, 9), (36, 9, 9), (36, 9, 9), (64, 5, 5), (128, 5, 5)],
        ),
        (
            cnn6,
            3,
            64,
            [(3, 64, 64), (12, 33, 33), (36, 17, 17), (36, 17, 17), (36, 17, 17), (64, 9, 9), (128, 9, 9)],
        ),
        (fcn3, 1, 28, [(1, 28, 28), (1000,), (100,)]),
    ],
)
def test_paper_models_have_the_paper_shapes(builder, channels, size, shapes):
    model = builder(in_channels=channels, image_size=size)
    assert model.block_input_shapes == shapes
    out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 1)
    assert all(block.op.bias is None for block in model.blocks)


def test_paper_models_activations():
    for block in cnn6().blocks[:-1]:
        assert isinstance(block.act, nn.LeakyReLU) and block.act.negative_slope == 0.2
    assert isinstance(cnn6().blocks[-1].act, nn.Identity)
    assert all(isinstance(b.act, nn.LeakyReLU) for b in fcn3().blocks)  # the output layer included
    assert cnn6d().blocks[1].op.out_channels == 20 and cnn6d().blocks[2].op.in_channels == 20
    assert fcn3().blocks[0].op.weight.shape == (1000, 784)


def test_paper_init_is_pytorch_default_and_seeded():
    torch.manual_seed(0)
    a = cnn6()
    torch.manual_seed(0)
    b = cnn6()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    bound = 1 / (3 * 4 * 4) ** 0.5  # kaiming_uniform(a=sqrt(5)) bound for conv1
    assert a.blocks[0].op.weight.abs().max() <= bound


def test_convnet_from_spec():
    model = build_convnet(
        [
            {"kind": "conv", "out": 4, "kernel": 3, "stride": 2, "padding": 1},
            {"kind": "conv", "out": 6, "kernel": 2, "stride": 1, "padding": 0, "activation": "identity"},
            {"kind": "linear", "out": 1, "activation": "identity", "bias": True},
        ],
        in_channels=1,
        image_size=9,
    )
    assert model.block_input_shapes == [(1, 9, 9), (4, 5, 5), (6, 4, 4)]
    assert model.blocks[2].op.bias is not None
    assert model(torch.rand(3, 1, 9, 9)).shape == (3, 1)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([{"kind": "pool", "out": 3}], "kind must be"),
        ([{"kind": "conv", "out": 3, "kernel": 40}], "leave no output pixels"),
        ([{"kind": "linear", "out": 3}, {"kind": "conv", "out": 3}], "cannot follow"),
        ([{"kind": "conv", "out": 3, "activation": "swish"}], "unknown activation"),
        ([{"kind": "conv", "out": 3, "kernal": 3}], "unknown keys"),
        ([], "no layers"),
    ],
)
def test_convnet_bad_specs_say_what_is_wrong(layers, message):
    with pytest.raises(ConfigError, match=message):
        build_convnet(layers, image_size=8)
