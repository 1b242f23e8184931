"""R-GAP on batches: the exact split of fully connected nets, label recovery, the combined fallback's marking and
scoring, and secure aggregation of several clients (docs/batches.md)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from rgap_bench.__main__ import main
from rgap_bench.attacks.hgap import HGAP
from rgap_bench.attacks.rgap import RGAP, read_layers
from rgap_bench.attacks.rgap.batch import batch_labels
from rgap_bench.data.photos import EmbeddedPhotos
from rgap_bench.errors import ConfigError
from rgap_bench.fl.aggregate import check_aggregation, concat_batches, weighted_mean
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.metrics import combined_per_sample, label_multiset_accuracy
from rgap_bench.models import build_convnet
from rgap_bench.run_metrics import RunMetrics


def _batch(size: int, image_size: int = 4, channels: int = 1, index: int = 0):
    photos = EmbeddedPhotos(name="photos", image_size=image_size, channels=channels, index=index, batch_size=size)
    return photos.private_batch(0)


def _fc_net(outputs: int = 6, bias: bool = True, widths: tuple[int, ...] = (24, 12)) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [{"kind": "linear", "out": w, "bias": bias} for w in widths]
    layers.append({"kind": "linear", "out": outputs, "activation": "identity", "bias": bias})
    return build_convnet(name="fc", in_channels=1, image_size=4, layers=layers)


def _ce_update(model, batch, share_labels: bool = False):
    client = FedSGDClient(model, loss="cross_entropy", label_policy="true", share_labels=share_labels)
    return client.compute_update(batch), client.targets(batch)


def _score(reconstruction, batch, targets) -> RunMetrics:
    return RunMetrics.score(
        reconstruction, batch.inputs, targets, labels_shared=False, attack_time_s=0.0,
        indices=batch.indices.tolist(), run={}, client={},
    )  # fmt: skip


@pytest.mark.parametrize("size", [2, 4])
def test_a_small_fc_net_splits_a_batch_with_distinct_labels_exactly(size):
    model, batch = _fc_net(), _batch(size)
    update, targets = _ce_update(model, batch)
    result = RGAP()(model, update)
    assert not result.combined and result.status == "exact", result.status_reason
    metrics = _score(result, batch, targets)
    assert [row["psnr"] for row in metrics.per_image] == [100.0] * size  # every sample, after matching
    assert metrics.label_acc == 1.0 and sorted(result.labels.tolist()) == sorted(targets.tolist())
    assert sorted(metrics.assignment) == list(range(size))
    assert all(report.status == "exact" and report.rank_method == "batch split" for report in result.layers)


def test_shared_labels_are_used_and_the_inferred_ones_recorded():
    model, batch = _fc_net(), _batch(3)
    update, targets = _ce_update(model, batch, share_labels=True)
    result = RGAP()(model, update)
    info = result.info["batch"]
    assert result.labels.tolist() == targets.tolist() == info["labels_shared"]
    assert sorted(info["labels_inferred"]) == sorted(targets.tolist())
    assert _score(result, batch, targets).psnr == 100.0


def test_labels_are_read_from_the_bias_gradient_signs():
    model, batch = _fc_net(outputs=8), _batch(5)
    update, targets = _ce_update(model, batch)
    head = read_layers(model, update, torch.float64)[-1]
    assert sorted(batch_labels(head, 5)) == sorted(targets.tolist())
    bias_free = _fc_net(bias=False)
    head = read_layers(bias_free, _ce_update(bias_free, batch)[0], torch.float64)[-1]
    assert batch_labels(head, 5) is None  # no bias gradient: no signs to read


def test_a_batch_as_large_as_the_class_count_cannot_split_and_says_so():
    model, batch = _fc_net(outputs=4), _batch(4)
    update, targets = _ce_update(model, batch, share_labels=True)
    result = RGAP()(model, update)
    reason = result.info["batch"]["combined_reason"]
    assert result.combined and result.inputs.shape[0] == 1 and "at most 3 samples" in reason
    assert result.status != "exact" and "combined reconstruction of 4 samples" in result.status_reason
    record = _score(result, batch, targets).record()
    assert record["combined"] is True and record["combined_reason"] == reason
    assert record["per_image"][0]["original"] == "mean" and record["label_acc"] == 1.0  # the shared labels, unordered
    per_sample = record["combined_per_sample"]
    assert len(per_sample["psnr"]) == 4 and per_sample["matched_psnr"] == max(per_sample["psnr"])


def test_repeated_labels_fall_back_to_the_combination():
    model = _fc_net()
    batch = _batch(2)
    inputs = torch.cat([batch.inputs, batch.inputs.flip(-1)])
    client = FedSGDClient(model, loss="cross_entropy", label_policy="true", share_labels=True)
    labels = torch.tensor([2, 2, 5, 5])
    doubled = type(batch)(inputs, labels, labels % 2, torch.arange(4), "photos")
    result = RGAP()(model, client.compute_update(doubled, labels))
    assert result.combined and "labels repeat" in result.info["batch"]["combined_reason"]


def test_a_conv_net_batch_is_combined_and_scored_against_the_mean_and_each_sample():
    torch.manual_seed(0)
    model = build_convnet(name="tiny", in_channels=1, image_size=6, layers=[
        {"kind": "conv", "out": 4, "kernel": 3, "stride": 1, "padding": 1},
        {"kind": "linear", "out": 1, "activation": "identity"},
    ])  # fmt: skip
    batch = _batch(2, image_size=6)
    client = FedSGDClient(model)
    update = client.compute_update(batch)
    result = RGAP()(model, update)
    assert result.combined and "one output logit" in result.info["batch"]["combined_reason"]
    record = _score(result, batch, client.targets(batch)).record()
    assert record["combined"] and record["assignment"] is None
    mean = batch.inputs.mean(dim=0, keepdim=True)
    expected = -10 * torch.log10((result.inputs.clamp(0, 1).double() - mean.double()).pow(2).mean())
    assert record["psnr"] == pytest.approx(min(100.0, float(expected)), abs=1e-6)
    assert record["combined_per_sample"]["matched_original"] in (0, 1)


def test_combined_scores_and_multiset_label_accuracy():
    originals = torch.stack([torch.zeros(1, 4, 4), torch.full((1, 4, 4), 0.5)])
    scores = combined_per_sample(torch.full((1, 1, 4, 4), 0.45), originals)
    assert scores["matched_original"] == 1 and scores["matched_psnr"] == pytest.approx(20 * 1.30103, abs=1e-4)
    assert scores["psnr"][0] == pytest.approx(-20 * torch.log10(torch.tensor(0.45)).item(), abs=1e-4)
    assert label_multiset_accuracy(torch.tensor([3, 3, 1]), torch.tensor([1, 3, 2])) == pytest.approx(2 / 3)


def test_the_fcn3_batch_sweep_completes_without_a_failed_job(tmp_path, monkeypatch):
    """`python -m rgap_bench -m data.batch_size=1,2,4 model=fcn3` in this process, on 8-pixel photos."""
    sweep = tmp_path / "sweep"
    argv = ["rgap_bench", "-m", "data.batch_size=1,2,4", "model=fcn3", "data.image_size=8", "logger=none"]
    argv += ["save_images=false", "print_summary=false", f"hydra.sweep.dir={sweep}"]
    argv += ["hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    records = [json.loads(path.read_text()) for path in sorted(sweep.glob("*/metrics.json"))]
    assert [r["status"] for r in records] == ["ok"] * 3
    assert [r["combined"] for r in records] == [False, True, True]
    assert records[0]["psnr"] >= 60 and "one output logit" in records[2]["combined_reason"]


def test_the_weighted_mean_of_client_gradients_is_the_union_batch_gradient():
    model = _fc_net()
    first, second = _batch(2), _batch(3, index=2)
    updates = [_ce_update(model, b, share_labels=True)[0] for b in (first, second)]
    union = concat_batches([first, second])
    expected, _ = _ce_update(model, union, share_labels=True)
    aggregate = weighted_mean(updates)
    assert aggregate.metadata.batch_size == 5
    assert torch.equal(aggregate.metadata.labels, expected.metadata.labels)
    for name, tensor in expected.tensors.items():
        torch.testing.assert_close(aggregate.tensors[name], tensor, rtol=1e-5, atol=1e-7)


def test_an_aggregate_of_two_clients_is_split_and_each_reconstruction_names_its_client(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    argv = ["rgap_bench", "model=fcn3", "model.outputs=8", "model.bias=true", "client.loss=cross_entropy"]
    argv += ["client.label_policy=true", "client.share_labels=false", "data.image_size=8", "data.batch_size=2"]
    argv += ["fl.num_clients=2", "fl.aggregate=true", "logger=none", "save_images=false", "print_summary=false"]
    argv += [f"hydra.run.dir={run_dir}", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["attack_status"], metrics["combined"]) == ("ok", "exact", False)
    assert metrics["update"]["batch_size"] == 4 and metrics["label_acc"] == 1.0
    assert [row["psnr"] for row in metrics["per_image"]] == [100.0] * 4
    owners = metrics["fl"]["sample_clients"]
    assert owners == [0, 0, 1, 1] and len(metrics["defense_report"]["clients"]) == 2
    assert metrics["matched_clients"] == [owners[j] for j in metrics["assignment"]]


def test_aggregation_needs_a_federation_and_the_mean_reduction(compose_config):
    for overrides, message in [
        (("fl.aggregate=true",), "fl.num_clients >= 2"),
        (("fl.aggregate=true", "fl.num_clients=2", "client.reduction=sum"), "client.reduction=mean"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_aggregation(compose_config(*overrides))


def test_hgap_matches_every_sample_when_rgap_can_only_combine_the_batch():
    model = build_convnet(name="tiny", in_channels=1, image_size=4, layers=[{"kind": "linear", "out": 1}])
    batch = _batch(2)
    result = HGAP(matching={"max_iterations": 5, "progress": False})(model, FedSGDClient(model).compute_update(batch))
    assert result.inputs.shape[0] == 2 and not result.combined and result.info["hgap"]["stage"] == "matching"
    assert "could not split the batch" in result.status_reason


@pytest.mark.parametrize(("activation", "bias"), [("tanh", True), ("identity", True), ("leaky_relu", False)])
def test_the_split_needs_no_particular_activation_and_no_bias_when_labels_are_shared(activation, bias):
    torch.manual_seed(0)
    layers = [{"kind": "linear", "out": w, "bias": bias, "activation": activation} for w in (24, 12)]
    layers.append({"kind": "linear", "out": 6, "activation": "identity", "bias": bias})
    model = build_convnet(name="fc", in_channels=1, image_size=4, layers=layers)
    batch = _batch(3)
    update, targets = _ce_update(model, batch, share_labels=not bias)
    result = RGAP()(model, update)
    assert not result.combined and result.status == "exact", result.status_reason
    assert _score(result, batch, targets).psnr == 100.0


def test_a_layer_narrower_than_the_batch_leaves_directions_undetermined_and_says_so():
    model, batch = _fc_net(widths=(3, 24)), _batch(4)  # layer 0 has 3 outputs: its 4 samples' k are dependent
    update, _ = _ce_update(model, batch)
    result = RGAP()(model, update)
    first = result.layers[0]
    assert not result.combined and first.rank_deficiency > 0 and "input directions undetermined" in first.status_reason
    assert result.status == "approximate" and result.layers[-1].status == "exact"


def test_an_aggregated_client_whose_update_diverged_is_named_before_its_defence(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    argv = ["rgap_bench", "model=fcn3", "model.outputs=8", "model.bias=true", "client.loss=cross_entropy"]
    argv += ["data.image_size=8", "fl.num_clients=2", "fl.aggregate=true", "pretrain.epochs=1", "pretrain.lr=1e30"]
    argv += ["defense=gaussian", "logger=none", "save_images=false", "print_summary=false"]
    argv += [f"hydra.run.dir={run_dir}", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        main()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed"
    assert "client 0's fedsgd update (fl.aggregate=true) contains NaN or Inf" in metrics["error"]
    assert "lower pretrain.lr" in metrics["error"]
