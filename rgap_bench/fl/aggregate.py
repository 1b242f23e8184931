"""Secure aggregation: K clients each compute (and defend) their update on their own shard with their own Lightning
client, and the server sees only the weighted mean (`fl.aggregate=true`).

The weights are the clients' sample counts, n_c / N: for FedSGD with the mean reduction the aggregate is exactly the
mean gradient of the union of the clients' batches, so the attack sees one batch of N = sum n_c samples, and the
same batch machinery (R-GAP's split or combination, docs/batches.md) attacks it. Scoring keeps which client each
sample came from, so the report can say which client each reconstruction matched.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from rgap_bench.errors import ConfigError
from rgap_bench.fl.data import FederatedDataModule
from rgap_bench.fl.updates import check_finite
from rgap_bench.types import ClientContext, ClientUpdate, PrivateBatch

CLIENT_SEED_STRIDE = 1000  # client c's defence noise uses defense.seed + 1000 c: independent noise per client


@dataclass(frozen=True)
class Aggregate:
    """The union of the clients' private batches (client order) and the one update the server sees."""

    batch: PrivateBatch
    targets: Tensor
    update: ClientUpdate
    sample_clients: list[int]  # the client each sample of `batch` belongs to
    defense_reports: list[dict[str, Any]]  # one per client, in client order


def concat_batches(batches: list[PrivateBatch]) -> PrivateBatch:
    return PrivateBatch(
        inputs=torch.cat([b.inputs for b in batches]),
        labels=torch.cat([b.labels for b in batches]),
        binary_labels=torch.cat([b.binary_labels for b in batches]),
        indices=torch.cat([b.indices for b in batches]),
        dataset=batches[0].dataset,
    )


def weighted_mean(updates: list[ClientUpdate]) -> ClientUpdate:
    """sum_c (n_c / N) u_c, with metadata for the union: N samples, the labels concatenated when every client
    shared its own, the clients' losses averaged with the same weights."""
    counts = [u.metadata.batch_size for u in updates]
    total = sum(counts)
    tensors = {
        name: sum(u.tensors[name] * (n / total) for u, n in zip(updates, counts, strict=True))
        for name in updates[0].tensors
    }
    labels = [u.metadata.labels for u in updates]
    losses = [u.metadata.client_loss for u in updates]
    meta = dataclasses.replace(
        updates[0].metadata,
        batch_size=total,
        labels=torch.cat(labels) if all(t is not None for t in labels) else None,
        client_loss=None if None in losses else math.fsum(v * n / total for v, n in zip(losses, counts, strict=True)),
    )
    return ClientUpdate(tensors, meta)


def check_aggregation(cfg: DictConfig) -> None:
    """Aggregation needs a federation, and a mean-reduced loss for the aggregate to be one batch's gradient."""
    if cfg.fl.num_clients < 2:
        raise ConfigError(f"fl.aggregate=true needs fl.num_clients >= 2, got {cfg.fl.num_clients}")
    if cfg.client.reduction != "mean":
        raise ConfigError(
            "fl.aggregate=true averages the clients' updates weighted by their sample counts, which is one batch's "
            f"gradient only for client.reduction=mean; got {cfg.client.reduction!r}"
        )


def client_batches(federation: FederatedDataModule, seed: int) -> list[PrivateBatch]:
    """Every client's private batch, each from its own shard (data.batch_size and data.index apply per client)."""
    return [federation.private_batch(seed, client=c) for c in range(federation.num_clients)]


def aggregate_round(cfg: DictConfig, batches: list[PrivateBatch], federation: FederatedDataModule,
                    model: nn.Module, device: torch.device,
                    divergence_hint: Callable[[ClientUpdate], str]) -> Aggregate:  # fmt: skip
    """Every client's update from its own Lightning client on a copy of the global model, its own defence
    (independent noise), and the weighted mean of the defended updates. Each client's update is checked before
    its defence, so a diverged client is named (with `divergence_hint`) instead of surfacing as a NaN mean."""
    targets, updates, reports, owners = [], [], [], []
    for c, batch in enumerate(batches):
        client = instantiate(cfg.client, model=copy.deepcopy(model)).to(device)
        labels = client.targets(batch)
        update = client.compute_update(batch, labels)
        check_finite(update, f"client {c}'s {cfg.client.name} update (fl.aggregate=true)", divergence_hint(update))
        defense = instantiate(cfg.defense, seed=cfg.defense.seed + CLIENT_SEED_STRIDE * c)
        shard = len(federation.shard(c))
        update = defense(update, ClientContext(client.model, batch.inputs.to(device), labels, client.loss, shard))
        targets.append(labels)
        updates.append(update)
        reports.append(defense.report())
        owners += [c] * batch.batch_size
    return Aggregate(concat_batches(batches), torch.cat(targets), weighted_mean(updates), owners, reports)
