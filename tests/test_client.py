import pytest
import torch

from rgap_bench.errors import ConfigError
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.losses import BinaryLogistic
from rgap_bench.models import build_convnet


def _linear_model():
    torch.manual_seed(0)
    return build_convnet([{"kind": "linear", "out": 1, "activation": "identity"}], in_channels=1, image_size=4)


def test_gradient_equals_hand_computed_logistic_gradient(photo_batch):
    model = _linear_model()
    batch = photo_batch(image_size=4, channels=1, index=2)
    client = FedSGDClient(model, label_policy="true")
    update = client.compute_update(batch)
    x = batch.inputs.reshape(-1).double()
    w = model.blocks[0].op.weight.detach().reshape(-1).double()
    t = float(batch.binary_labels[0])
    mu = float(w @ x)
    expected = (torch.sigmoid(torch.tensor(mu, dtype=torch.float64)) - t) * x  # dL/dw of BCE on the logit
    assert torch.allclose(update.tensors["blocks.0.op.weight"].reshape(-1).double(), expected, atol=1e-6)
    assert update.metadata.kind == "gradient" and update.metadata.batch_size == 1
    assert update.metadata.loss == BinaryLogistic("mean") and update.metadata.input_shape == (1, 4, 4)
    loss = float(torch.nn.functional.softplus(torch.tensor(-(2 * t - 1) * mu)))  # log(1 + exp(-y mu)), y = 2t - 1
    record = {"kind": "gradient", "batch_size": 1, "client_loss": pytest.approx(loss, rel=1e-5)}
    assert update.metadata.record() == record  # what client.json carries under "update"


def test_flip_prediction_labels_are_the_opposite_of_the_prediction(photo_batch):
    model = _linear_model()
    for index in range(8):
        batch = photo_batch(image_size=4, channels=1, index=index)
        client = FedSGDClient(model)
        predicted_positive = bool(model(batch.inputs)[0, 0] > 0)
        assert int(client.targets(batch)[0]) == (0 if predicted_positive else 1)
        c = float(
            model.blocks[0].op.weight.detach().reshape(-1)
            @ client.compute_update(batch).tensors["blocks.0.op.weight"].reshape(-1)
        )
        assert c > 0  # a wrong prediction: the output scalar has a unique root


def test_labels_withheld_when_not_shared(photo_batch):
    client = FedSGDClient(_linear_model(), share_labels=False)
    assert client.compute_update(photo_batch(image_size=4, channels=1)).metadata.labels is None


def test_cross_entropy_client_uses_class_labels(photo_batch):
    torch.manual_seed(0)
    model = build_convnet([{"kind": "linear", "out": 10, "activation": "identity"}], in_channels=1, image_size=4)
    batch = photo_batch(image_size=4, channels=1, index=5)
    client = FedSGDClient(model, loss="cross_entropy", label_policy="true")
    assert torch.equal(client.targets(batch), batch.labels)
    update = client.compute_update(batch)
    x = batch.inputs.reshape(-1)
    p = torch.softmax(model(batch.inputs)[0], 0).detach()
    expected = torch.outer(p - torch.nn.functional.one_hot(batch.labels, 10)[0].float(), x)
    assert torch.allclose(update.tensors["blocks.0.op.weight"], expected, atol=1e-6)
    flipped = FedSGDClient(model, loss="cross_entropy").targets(batch)
    assert int(flipped[0]) != int(model(batch.inputs).argmax(1)[0])


def test_unknown_loss_is_refused_when_the_client_is_built():
    with pytest.raises(ConfigError, match="unknown client loss 'hinge'"):
        FedSGDClient(_linear_model(), loss="hinge")


def test_label_policy_true_from_the_command_line_is_the_policy_not_a_boolean(compose_config):
    """YAML reads `client.label_policy=true` as a boolean and the str schema makes it "True"."""
    from hydra.utils import instantiate

    cfg = compose_config("client.label_policy=true")
    client = instantiate(cfg.client, model=_linear_model())
    assert client.label_policy == "true"
