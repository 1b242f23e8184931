"""FedAvg client, partitions, pretraining checkpoints, the utility run, and the CLI through them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from rgap_bench.data.digits import EmbeddedDigits
from rgap_bench.data.photos import EmbeddedPhotos
from rgap_bench.defenses.dpsgd import rdp_epsilon
from rgap_bench.errors import ConfigError
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.fl.data import FederatedDataModule, partition, partition_stats
from rgap_bench.fl.fedavg import FedAvgClient
from rgap_bench.fl.server import load_checkpoint, pretrain, save_checkpoint
from rgap_bench.fl.updates import as_gradient
from rgap_bench.losses import BinaryLogistic
from rgap_bench.models import build_convnet, cnn6

SMALL_NET = [
    {"kind": "conv", "out": 4, "kernel": 4, "stride": 2, "padding": 1},
    {"kind": "linear", "out": 1, "activation": "identity"},
]


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_convnet(SMALL_NET, in_channels=3, image_size=8)


@pytest.mark.parametrize(("precision", "rtol"), [("32-true", 2e-3), ("64-true", 1e-5)])
def test_fedavg_one_step_is_the_scaled_fedsgd_gradient(precision, rtol, photo_batch):
    torch.manual_seed(0)
    model = cnn6()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = photo_batch()
    gradient = FedSGDClient(model).compute_update(batch)
    update = FedAvgClient(model, local_steps=1, lr=0.1, precision=precision).compute_update(batch)
    assert update.metadata.kind == "weight_delta"
    assert update.metadata.local_steps == 1 and update.metadata.lr == 0.1
    converted = as_gradient(update)
    assert converted.metadata.kind == "gradient" and converted.metadata.exact_conversion
    for name, g in gradient.tensors.items():
        assert update.tensors[name].dtype == g.dtype
        assert torch.linalg.vector_norm(converted.tensors[name] - g) <= rtol * torch.linalg.vector_norm(g)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the global model is untouched


def test_fedavg_many_steps_reports_them_and_drifts_from_the_gradient(photo_batch):
    model = small_model()
    batch = photo_batch(image_size=8, index=0)
    gradient = FedSGDClient(model).compute_update(batch)
    update = FedAvgClient(model, local_steps=4, lr=0.5).compute_update(batch)
    assert update.metadata.local_steps == 4
    converted = as_gradient(update)
    assert converted.metadata.exact_conversion is False
    name = "blocks.0.op.weight"
    assert not torch.allclose(converted.tensors[name], gradient.tensors[name], rtol=1e-2)


def test_iid_partition_assigns_every_index_once_in_balanced_shards():
    labels = torch.arange(1000) % 10
    shards = partition(labels, 7, "iid", seed=1)
    everything = torch.cat(shards)
    assert torch.equal(everything.sort().values, torch.arange(1000))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def test_dirichlet_partition_is_skewed_for_small_alpha_and_near_uniform_for_large():
    labels = EmbeddedDigits(name="digits", image_size=28, channels=1).dataset.labels
    for alpha, check in ((0.05, lambda d: d > 0.6), (1000.0, lambda d: d < 0.2)):
        shards = partition(labels, 10, "dirichlet", alpha=alpha, seed=0)
        assert torch.equal(torch.cat(shards).sort().values, torch.arange(len(labels)))
        stats = partition_stats(labels, shards, 10)
        dominant = [d for d, size in zip(stats["dominant_share"], stats["sizes"], strict=True) if size > 0]
        assert check(sum(dominant) / len(dominant)), (alpha, dominant)


def test_datamodule_serves_the_attacked_clients_shard():
    source = EmbeddedPhotos(name="photos", image_size=8, index=1)
    dm = FederatedDataModule(source, num_clients=4, partition="iid", seed=0, batch_size=5, client=2)
    batch = dm.private_batch(seed=0)
    assert int(batch.indices[0]) == int(dm.shard(2)[1])
    inputs, targets = next(iter(dm.train_dataloader()))
    assert inputs.shape == (5, 3, 8, 8) and set(targets.tolist()) <= {0, 1}


def test_checkpoint_round_trip_restores_identical_parameters(tmp_path):
    model = small_model(seed=0)
    save_checkpoint(model, tmp_path / "w.pt", {"epochs": 1})
    other = small_model(seed=1)
    assert load_checkpoint(other, tmp_path / "w.pt") == {"epochs": 1}
    for (n, p), (_, q) in zip(model.named_parameters(), other.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    torch.load(tmp_path / "w.pt", weights_only=True)  # loads without unpickling code


def test_pretraining_trains_caches_and_reloads(tmp_path):
    source = EmbeddedPhotos(name="photos", image_size=8)
    cfg = SimpleNamespace(epochs=2, lr=0.05, momentum=0.9, batch_size=8, checkpoint=None, exclude_private=True)
    model = small_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = pretrain(model, cfg, source, BinaryLogistic(), torch.tensor([0]), tmp_path, torch.device("cpu"), 0)
    assert not report["loaded"] and report["train_samples"] == len(source.dataset) - 1
    assert report["excluded"] == [0]
    inputs, labels = source.dataset.batch(torch.arange(1, len(source.dataset)))  # every photo but the private one
    predicted = (model(inputs)[:, 0] > 0).long()  # the logistic model's decision: logit > 0 means class 1
    assert report["train_acc_eval"] == float((predicted == source.binary_label(labels).long()).double().mean())
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters())
    again = small_model()
    reloaded = pretrain(again, cfg, source, BinaryLogistic(), torch.tensor([0]), tmp_path, torch.device("cpu"), 0)
    assert reloaded["loaded"]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(), strict=True))
    cfg.epochs = 3
    with pytest.raises(ConfigError, match="trained differently"):
        pretrain(small_model(), cfg, source, BinaryLogistic(), torch.tensor([0]), tmp_path, torch.device("cpu"), 0)


@pytest.mark.slow
def test_cli_fedavg_one_step_on_a_pretrained_model_recovers_and_reports(tmp_path, run_cli):
    run_dir = tmp_path / "fedavg"
    proc = run_cli(
        "client=fedavg", "client.local_steps=1", "client.precision=64-true", "model=convnet", "data.image_size=8",
        "pretrain.epochs=1", "defense=[clipping,gaussian]", "defense.clipping.max_norm=1e6", "defense.gaussian.sigma=0",
        "defense.utility=true", "defense.utility_epochs=1", "logger=none", "save_images=false",
        f"hydra.run.dir={run_dir}", tmp_path=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["psnr"] > 60
    assert metrics["update"]["kind"] == "weight_delta" and metrics["update"]["local_steps"] == 1
    assert [s["name"] for s in metrics["defense_report"]["steps"]] == ["clipping", "gaussian"]
    assert metrics["pretrain"]["epochs"] == 1 and (run_dir / "pretrained.pt").exists()
    utility = metrics["utility"]
    assert (utility["train_samples"], utility["test_samples"], utility["steps"]) == (31, 8, 4)  # 39 photos, batch 8
    assert utility["test_acc"] * 8 == pytest.approx(round(utility["test_acc"] * 8))  # a count of the 8 test photos


def test_dpsgd_round_reports_epsilon_for_the_clients_sampling_rate(tmp_path, compose_config):
    from hydra.utils import instantiate

    from rgap_bench.fl.round import run_client_round
    from rgap_bench.run_metrics import client_summary

    cfg = compose_config("defense=dpsgd", "model=convnet", "data.image_size=8", "fl.num_clients=4", "logger=none")
    fl_round = run_client_round(cfg, instantiate(cfg.data), tmp_path, torch.device("cpu"))
    report = fl_round.reports["defense_report"]
    assert report["steps"][0]["sample_rate"] == pytest.approx(1 / 10)  # 40 photos, 4 IID clients, batch 1
    assert report["epsilon"] == pytest.approx(rdp_epsilon(1.0, 1 / 10, 1, 1e-5))  # dpsgd's defaults, one step
    assert client_summary(fl_round.record())["privacy/epsilon"] == report["epsilon"]
    assert fl_round.reports["fl"]["client_samples"] == 10
