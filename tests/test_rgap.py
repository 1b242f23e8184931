"""R-GAP recovers single inputs exactly where the paper says it should, and refuses what it cannot do."""

import dataclasses

import pytest
import torch
from torch import nn

from rgap_bench.attacks.rgap import RGAP
from rgap_bench.data.digits import EmbeddedDigits
from rgap_bench.errors import InvalidUpdateError, UnsupportedModelError
from rgap_bench.models import build_convnet, cnn6, cnn6d, fcn3
from rgap_bench.rank import analyse_model, conv_counts


def attack(model, update, **kwargs):
    return RGAP(rank=kwargs.pop("rank", "off"), **kwargs)(model, update)


def test_cnn6_exact_on_an_embedded_photo(make_update, photo_batch, psnr):
    torch.manual_seed(0)
    model = cnn6()
    batch = photo_batch()
    rec = attack(model, make_update(model, batch))
    assert psnr(rec.inputs, batch.inputs) >= 60
    assert len(rec.layers) == 7
    assert all(layer.residual_rel < 1e-4 for layer in rec.layers)


def test_full_rank_proven_by_the_gradient_rows_agrees_with_the_dense_rank(make_update, photo_batch, psnr):
    """rank=auto skips the dense factorisation where the gradient rows alone prove a layer full rank; the dense
    measurement (rank=exact) must find the same full rank there."""
    torch.manual_seed(0)
    model = cnn6(image_size=16)
    batch = photo_batch(image_size=16)
    update = make_update(model, batch)
    auto = attack(model, update, rank="auto")
    exact = attack(model, update, rank="exact")
    proven = [i for i, layer in enumerate(auto.layers) if "proven by the gradient rows" in layer.note]
    assert len(proven) >= 3
    for i in proven:
        assert auto.layers[i].solver == "pcg-blockjacobi" and auto.layers[i].rank_method == "gradient-row bound"
        assert auto.layers[i].rank == exact.layers[i].rank == auto.layers[i].unknowns
    assert exact.layers[proven[0]].solver.startswith("dense")
    assert psnr(auto.inputs, batch.inputs) >= 60


def test_fcn3_exact_on_an_embedded_digit(make_update, psnr):
    torch.manual_seed(0)
    model = fcn3()
    batch = EmbeddedDigits(name="digits", image_size=28, channels=1, index=2500).private_batch(0)
    rec = attack(model, make_update(model, batch))
    assert psnr(rec.inputs, batch.inputs) >= 60


def test_fcn3_output_activation_is_undone_for_either_logit_sign(make_update, photo_batch, psnr):
    """The reference code ignores FCN3's output LeakyReLU and is off by 1/0.2 when the logit is negative."""
    torch.manual_seed(3)
    model = fcn3(in_channels=3, image_size=8)
    signs = set()
    for index in range(6):
        batch = photo_batch(image_size=8, index=index)
        signs.add(bool(model(batch.inputs)[0, 0] > 0))
        rec = attack(model, make_update(model, batch, label_policy="true"))
        assert psnr(rec.inputs, batch.inputs) >= 60
    assert signs == {True, False}


def test_small_convnet_with_stride_padding_and_an_unpadded_even_kernel(make_update, photo_batch, psnr):
    torch.manual_seed(1)
    model = build_convnet(
        [
            {"kind": "conv", "out": 8, "kernel": 3, "stride": 1, "padding": 1},
            {"kind": "conv", "out": 24, "kernel": 3, "stride": 2, "padding": 1},
            {"kind": "conv", "out": 32, "kernel": 2, "stride": 1, "padding": 0, "activation": "identity"},
            {"kind": "linear", "out": 1, "activation": "identity"},
        ],
        in_channels=3,
        image_size=12,
    )
    batch = photo_batch(image_size=12, index=3)
    rec = attack(model, make_update(model, batch), rank="exact")
    assert psnr(rec.inputs, batch.inputs) >= 60
    assert [layer.rank_deficiency for layer in rec.layers] == [0, 0, 0, 0]


def test_label_is_inferred_when_not_shared(make_update, photo_batch, psnr):
    torch.manual_seed(0)
    model = fcn3(in_channels=3, image_size=8)
    batch = photo_batch(image_size=8, index=1)
    update = make_update(model, batch, share_labels=False)
    assert update.metadata.labels is None
    rec = attack(model, update)
    true_label = int(model(batch.inputs)[0, 0] <= 0)  # flip_prediction
    assert int(rec.labels[0]) == true_label
    assert psnr(rec.inputs, batch.inputs) >= 60
    assert len(rec.info["candidates"]) == 2


@pytest.mark.slow  # a dense 3468 x 3468 factorisation and the joint solve; the small models below cover the path
def test_cnn6d_reports_the_rank_deficient_second_conv(make_update, photo_batch, psnr):
    torch.manual_seed(0)
    model = cnn6d()
    batch = photo_batch()
    rec = attack(model, make_update(model, batch), rank="auto")
    deficiency = [layer.rank_deficiency for layer in rec.layers]
    counted = [row.predicted_deficiency for row in analyse_model(model, numeric=False).layers]
    assert deficiency[1] == counted[1] > 0
    assert deficiency[2:] == counted[2:] == [0] * 5
    assert rec.layers[0].solver == "joint-null-space"  # conv1 is solved together with conv2's null space
    assert rec.layers[1].rank == rec.layers[1].unknowns - deficiency[1]
    # conv2 alone leaves 280 directions open, but conv1's surplus equations determine them jointly
    assert psnr(rec.inputs, batch.inputs) >= 60


def _tiny(act: nn.Module | None = None) -> nn.Module:
    model = build_convnet(
        [{"kind": "conv", "out": 2, "kernel": 3, "padding": 1}, {"kind": "linear", "out": 1}],
        in_channels=1,
        image_size=4,
    )
    if act is not None:
        model.blocks[0].act = act
    return model


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_tiny(nn.LeakyReLU(-0.1)), "LeakyReLU"),
        (_tiny(nn.GELU()), "GELU"),
    ],
)
def test_unsupported_layers_are_named(model, message, make_update, photo_batch):
    batch = photo_batch(image_size=4, channels=1)
    with pytest.raises(UnsupportedModelError, match=message):
        attack(model, make_update(model, batch))


def test_unsupported_op_and_head_are_named(make_update, photo_batch):
    model = _tiny()
    batch = photo_batch(image_size=4, channels=1)
    update = make_update(model, batch)
    model.blocks[0].op = nn.Conv2d(1, 2, 3, padding=1, bias=False, dilation=1, groups=1, padding_mode="circular")
    with pytest.raises(UnsupportedModelError, match="layer 0"):
        attack(model, update)
    wide = build_convnet([{"kind": "linear", "out": 2}], in_channels=1, image_size=4)
    update = dataclasses.replace(update, tensors={"blocks.0.op.weight": torch.zeros(2, 16)})
    with pytest.raises(UnsupportedModelError, match="binary logistic loss needs one logit"):
        attack(wide, update)


def test_nan_gradient_is_rejected_with_the_tensor_name(make_update, photo_batch):
    model = _tiny()
    update = make_update(model, photo_batch(image_size=4, channels=1))
    tensors = dict(update.tensors)
    tensors["blocks.0.op.weight"] = tensors["blocks.0.op.weight"].clone()
    tensors["blocks.0.op.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidUpdateError, match=r"blocks\.0\.op\.weight"):
        attack(model, dataclasses.replace(update, tensors=tensors))


def test_float32_solve_still_recovers(make_update, photo_batch, psnr):
    torch.manual_seed(0)
    model = fcn3(in_channels=3, image_size=8)
    batch = photo_batch(image_size=8)
    rec = attack(model, make_update(model, batch), dtype="float32")
    assert psnr(rec.inputs, batch.inputs) >= 40


def test_noise_beyond_the_logistic_range_is_attacked_not_refused(make_update, photo_batch):
    model = _tiny()
    update = make_update(model, photo_batch(image_size=4, channels=1))
    tensors = dict(update.tensors)
    head = model.blocks[-1].op.weight.detach()
    tensors["blocks.1.op.weight"] = -head / head.norm() ** 2  # <w, g> = -1, impossible without noise
    rec = attack(model, dataclasses.replace(update, tensors=tensors))
    assert rec.info["output_scalar_clamped"] is True
    assert rec.info["output_scalar"] == pytest.approx(-1.0)
    assert torch.isfinite(rec.inputs).all()


CONV2_NULL = conv_counts((8, 8, 8), 2, (3, 3), (2, 2), (1, 1)).predicted_deficiency  # conv2 of the model above


@pytest.mark.parametrize("seed", [0, 2])
def test_null_space_of_a_deficient_layer_is_carried_into_the_layer_below(
    seed, make_update, photo_batch, psnr, deficient_over_surplus
):
    """conv2 leaves 340 directions open; conv1's surplus weight equations pin most of them down jointly."""
    model = deficient_over_surplus(seed)
    batch = photo_batch(image_size=8, channels=1, index=seed)
    update = make_update(model, batch)
    plain = attack(model, update, rank="exact", carry_null_space=False)
    carried = attack(model, update, rank="exact", carry_null_space=True)
    assert plain.layers[1].rank_deficiency == CONV2_NULL == 340
    assert carried.layers[0].solver == "joint-null-space"
    assert carried.layers[0].residual_rel < plain.layers[0].residual_rel / 3
    assert psnr(carried.inputs, batch.inputs) > psnr(plain.inputs, batch.inputs) + 5


def test_auto_goes_dense_where_the_bound_predicts_a_null_space(make_update, photo_batch, psnr, deficient_over_surplus):
    """rank=auto: a layer above rank_max_unknowns still gets the dense path (and the joint solve below it) when
    the counting bound predicts free directions and it fits under null_max_unknowns."""
    model = deficient_over_surplus(0)
    batch = photo_batch(image_size=8, channels=1, index=0)
    update = make_update(model, batch)
    carried = attack(model, update, rank="auto", rank_max_unknowns=100, null_max_unknowns=10_000)
    assert carried.layers[1].rank_deficiency == CONV2_NULL  # 512 unknowns > rank_max_unknowns, measured anyway
    assert carried.layers[0].solver == "joint-null-space"
    plain = attack(model, update, rank="auto", rank_max_unknowns=100, null_max_unknowns=0)
    assert plain.layers[1].rank is None and plain.layers[1].solver == "pcg-blockjacobi"
    assert psnr(carried.inputs, batch.inputs) > psnr(plain.inputs, batch.inputs) + 5


def test_dense_path_that_would_not_fit_in_memory_falls_back_to_pcg(monkeypatch, caplog, make_update, photo_batch):
    import rgap_bench.attacks.rgap.plan as plan_module
    from rgap_bench.linalg.resources import DenseMemory

    monkeypatch.setattr(plan_module, "dense_memory", lambda n, dtype, device: DenseMemory(8e12, 4e9))
    torch.manual_seed(0)
    model = cnn6d()
    batch = photo_batch()
    with caplog.at_level("WARNING", logger="rgap_bench.attacks.rgap"):
        rec = attack(model, make_update(model, batch), rank="auto")
    assert all(layer.solver in ("pcg-blockjacobi", "direct-linear") for layer in rec.layers)
    assert "needs ~8000.0 GB, 4.0 GB are free" in caplog.text


def test_attack_runs_ieee_float32_convolutions_and_restores_the_callers_setting(monkeypatch, make_update, photo_batch):
    """cuDNN's TF32 (torch's default for float32 convolutions) would cap a float32 solve at 10 mantissa bits."""
    import rgap_bench.attacks.rgap.solvers.iterative as pcg_module
    from rgap_bench.linalg.precision import conv_precision, conv_tf32

    seen = []
    real_pcg = pcg_module.pcg

    def recording_pcg(*args, **kwargs):
        seen.append(conv_precision())
        return real_pcg(*args, **kwargs)

    monkeypatch.setattr(pcg_module, "pcg", recording_pcg)
    torch.manual_seed(0)
    model = cnn6(image_size=16)
    update = make_update(model, photo_batch(image_size=16))
    with conv_tf32(True):
        before = conv_precision()
        attack(model, update, dtype="float32")
        after = conv_precision()
    assert seen and all(s.endswith(("=ieee", "=False")) for s in seen)
    assert before == after and before.endswith(("=tf32", "=True"))


def test_activation_derivative_follows_autograd_at_zero():
    from rgap_bench.linalg.activations import PiecewiseLinear

    z = torch.tensor([-1.0, 0.0, 1.0], requires_grad=True)
    nn.functional.leaky_relu(z, 0.2).sum().backward()
    assert torch.equal(PiecewiseLinear(0.2).derivative(z.detach()), z.grad)
