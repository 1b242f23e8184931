"""One check decides whether R-GAP can attack a model: the attack and the rank analysis give the same reason."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rgap_bench.attacks.rgap import RGAP
from rgap_bench.errors import InvalidUpdateError, UnsupportedModelError
from rgap_bench.models import build_convnet, cnn6, fcn3
from rgap_bench.models.checks import check_model, unsupported_reason
from rgap_bench.rank import analyse_model


def _tiny(act: nn.Module | None = None, bias: bool = False, op: nn.Module | None = None, head: int = 1) -> nn.Module:
    model = build_convnet(
        [{"kind": "conv", "out": 2, "kernel": 3, "padding": 1, "bias": bias}, {"kind": "linear", "out": head}],
        in_channels=1,
        image_size=4,
    )
    if act is not None:
        model.blocks[0].act = act
    if op is not None:
        model.blocks[0].op = op
    return model


def test_paper_models_pass_with_their_slopes_and_shapes():
    blocks = check_model(cnn6())
    assert [b.slope for b in blocks] == [0.2] * 6 + [1.0]
    assert [b.in_shape for b in blocks] == list(cnn6().block_input_shapes)
    assert blocks[0].out_shape == (12, 17, 17) and blocks[-1].out_shape == (1,)
    assert [b.slope for b in check_model(fcn3())] == [0.2] * 3
    assert unsupported_reason(cnn6()) is None


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_tiny(nn.LeakyReLU(-0.1)), "negative slope is not monotone"),
        (_tiny(nn.GELU()), "activation GELU"),
        (_tiny(op=nn.Conv2d(1, 2, 3, padding=1, bias=False, padding_mode="circular")), "zero padding"),
        (_tiny(op=nn.Conv2d(1, 2, 3, padding=2, dilation=2, bias=False)), "dilation=1"),
        (
            build_convnet([{"kind": "conv", "out": 1, "kernel": 3, "padding": 1}], in_channels=1, image_size=4),
            "needs an nn.Linear head",
        ),
    ],
)
def test_attack_and_rank_analysis_give_the_same_reason(model, message, make_update, photo_batch):
    reason = unsupported_reason(model)
    assert message in reason
    assert analyse_model(model, numeric=False).reason == reason
    update = make_update(_tiny(), photo_batch(image_size=4, channels=1))  # the reason comes before the update
    with pytest.raises(UnsupportedModelError) as raised:
        RGAP(rank="off")(model, update)
    assert str(raised.value) == reason


def test_a_model_that_is_not_a_block_stack_is_refused():
    with pytest.raises(UnsupportedModelError, match="SequentialNet"):
        check_model(nn.Sequential(nn.Linear(4, 1, bias=False)))
    assert "got Sequential" in unsupported_reason(nn.Sequential(nn.Linear(4, 1)))


def test_the_update_is_checked_after_the_model(make_update, photo_batch):
    model = _tiny()
    update = make_update(model, photo_batch(image_size=4, channels=1))
    tensors = {name: torch.zeros(1) for name in update.tensors}
    with pytest.raises(InvalidUpdateError, match="update shape"):
        RGAP(rank="off")(model, type(update)(tensors, update.metadata))


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (nn.MaxPool2d(2), "max pooling"),
        (nn.BatchNorm2d(2), "batch norm"),
        (nn.Dropout(0.5), "dropout"),
    ],
)
def test_a_foreign_model_names_its_first_non_invertible_layer(layer, message):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), layer, nn.Flatten(), nn.LazyLinear(1))
    with pytest.raises(UnsupportedModelError, match=message) as info:
        check_model(model)
    assert "'1'" in str(info.value) and "attack=ig" in str(info.value)
    assert unsupported_reason(nn.Sequential(nn.Linear(4, 1))) and "SequentialNet" in unsupported_reason(
        nn.Sequential(nn.Linear(4, 1))
    )
