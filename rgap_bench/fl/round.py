"""The client side of one run: federation, server state, the attacked client's update and its defences.

Everything here may touch private data; the runner hands the attack only `ClientRound.model` (the global model)
and `ClientRound.update` (what was sent).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from rgap_bench.data.base import ImageSource
from rgap_bench.errors import ConfigError
from rgap_bench.fl.aggregate import aggregate_round, check_aggregation, client_batches, concat_batches
from rgap_bench.fl.data import FederatedDataModule, fl_options
from rgap_bench.fl.server import pretrain
from rgap_bench.fl.updates import check_finite
from rgap_bench.fl.utility import evaluate_utility
from rgap_bench.logging import write_json
from rgap_bench.types import ClientContext, ClientUpdate, PrivateBatch

log = logging.getLogger(__name__)

CLIENT_FILE = "client.json"  # the client side of a run, written before the attack so a failed attack keeps it


@dataclass
class ClientRound:
    batch: PrivateBatch
    model: nn.Module  # the global model as the server holds it for this round
    targets: Tensor
    update: ClientUpdate  # as sent: after the defences
    reports: dict[str, Any] = field(default_factory=dict)  # defense_report, pretrain, fl, utility -> metrics.json
    sample_clients: list[int] | None = None  # fl.aggregate: the client each sample of `batch` came from

    def record(self) -> dict[str, Any]:
        """What metrics.json carries about the client side: the update's public metadata and the reports."""
        return {"update": self.update.metadata.record(), **self.reports}

    def save(self, run_dir: Path) -> None:
        write_json(run_dir / CLIENT_FILE, self.record())


def saved_record(run_dir: Path) -> dict[str, Any]:
    """The client side saved by `ClientRound.save`, for a run whose attack failed ({} when there is none)."""
    path = run_dir / CLIENT_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def check_input_shape(model: nn.Module, batch: PrivateBatch) -> None:
    """The model's declared input must be the data's: a mismatch would otherwise surface as a shape error deep
    inside torch."""
    expected = getattr(model, "input_shape", None)
    given = tuple(batch.inputs.shape[1:])
    if expected is not None and tuple(expected) != given:
        raise ConfigError(
            f"model {getattr(model, 'name', '')!r} takes inputs of shape {tuple(expected)} but data={batch.dataset} "
            f"gives {given}; leave model.in_channels and model.image_size at their defaults (they follow "
            "data.channels and data.image_size) or set them to match"
        )


def _divergence_hint(cfg: DictConfig, update: ClientUpdate) -> str:
    """What to change when the client's own update is not finite: the step sizes that could have diverged."""
    rates = ["client.lr"] if update.metadata.kind == "weight_delta" else []
    rates += ["pretrain.lr"] if cfg.pretrain.epochs > 0 else []
    if rates:
        return f"training diverged: lower {' or '.join(rates)}"
    return "the model's forward or backward pass overflowed: check the model and the data"


def run_client_round(cfg: DictConfig, data: ImageSource, run_dir: Path, device: torch.device) -> ClientRound:
    reports: dict[str, Any] = {}
    dataset_size = len(data.dataset)
    fl_options(cfg.fl)  # refuse a bad fl.* setting even when there is no federation to use it
    batches = None
    if cfg.fl.aggregate:
        check_aggregation(cfg)
    if cfg.fl.num_clients > 1:
        federation = FederatedDataModule(
            data, cfg.fl.num_clients, cfg.fl.partition, cfg.fl.alpha, cfg.seed, client=cfg.fl.client
        )
        batch = federation.private_batch(cfg.seed)
        dataset_size = len(federation.shard())
        stats = federation.stats()
        reports["fl"] = {**dict(cfg.fl), "client_samples": dataset_size, **stats}
        log.info("client %d of %d holds %d samples", cfg.fl.client, cfg.fl.num_clients, dataset_size)
        if cfg.fl.aggregate:  # the server sees every client's batch through one weighted mean
            batches = client_batches(federation, cfg.seed)
            batch = concat_batches(batches)
    else:
        batch = data.private_batch(cfg.seed)
    log.info("private batch: %s samples %s", data.name, batch.indices.tolist())

    torch.manual_seed(cfg.seed)  # the model's initial weights depend on the seed only, not on the data
    model = instantiate(cfg.model).to(device)
    check_input_shape(model, batch)
    client = instantiate(cfg.client, model=model).to(device)
    reports["pretrain"] = pretrain(model, cfg.pretrain, data, client.loss, batch.indices, run_dir, device, cfg.seed)
    if batches is not None:  # fl.aggregate: each client defends its own update; the server sees their mean
        agg = aggregate_round(cfg, batches, federation, model, device, lambda u: _divergence_hint(cfg, u))
        batch, targets, update, sample_clients = agg.batch, agg.targets, agg.update, agg.sample_clients
        report = {**agg.defense_reports[0], "clients": agg.defense_reports}
        reports["fl"]["sample_clients"] = sample_clients
    else:
        targets = client.targets(batch)
        update = client.compute_update(batch, targets)
        check_finite(update, f"the {cfg.client.name} client's update", _divergence_hint(cfg, update))
        defense = instantiate(cfg.defense)
        update = defense(update, ClientContext(model, batch.inputs.to(device), targets, client.loss, dataset_size))
        report, sample_clients = defense.report(), None
    nodes = ", ".join(f"defense.{name}.*" for name in report["name"].split("+"))
    check_finite(update, f"the update after defence {report['name']}", f"check its parameters ({nodes})")
    reports["defense_report"] = report
    if cfg.defense.utility:
        utility = evaluate_utility(model, cfg.defense, data, client.loss, batch.indices, device, cfg.seed)
        reports["utility"] = utility
        log.info("utility with defence %s: test accuracy %.3f", report["name"], utility["test_acc"])
    return ClientRound(batch, model, targets, update, reports, sample_clients)
