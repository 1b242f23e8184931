"""Client data: labels in the loss's label space, vectorised loaders, and the federation's partition of a dataset.

`FederatedDataModule` splits a data plugin's dataset among `num_clients` clients, IID or non-IID by a Dirichlet
prior over classes (Hsu et al. 2019: per class, client shares ~ Dir(alpha); small alpha gives each client few
classes, large alpha approaches IID).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from rgap_bench.data.base import ImageSource
from rgap_bench.errors import ConfigError
from rgap_bench.losses import Loss, make_loss
from rgap_bench.types import PrivateBatch

PARTITIONS = ("iid", "dirichlet")


@dataclass
class FLOptions:
    """The federation around the attacked client (`fl.*`): how the data plugin's dataset is split among clients."""

    num_clients: int = 1
    partition: str = "iid"  # iid | dirichlet
    alpha: float = 0.5  # Dirichlet concentration over classes (small = each client holds few classes)
    client: int = 0  # the attacked client; with num_clients > 1 its private batch comes from its own shard
    # secure aggregation: every client sends an update on its own batch, the server sees only their weighted mean
    aggregate: bool = False

    def __post_init__(self) -> None:
        if self.num_clients < 1:
            raise ConfigError(f"fl.num_clients must be >= 1 (1 = no federation), got {self.num_clients}")
        if self.partition not in PARTITIONS:
            raise ConfigError(f"fl.partition must be one of {PARTITIONS}, got {self.partition!r}")
        if self.alpha <= 0:
            raise ConfigError(f"fl.alpha must be > 0, got {self.alpha}")
        if not 0 <= self.client < self.num_clients:
            raise ConfigError(
                f"fl.client must be between 0 and fl.num_clients - 1 = {self.num_clients - 1}, got {self.client}"
            )


def fl_options(cfg: Any) -> FLOptions:
    """Validated options from any object carrying the fields (the `fl` config node, a namespace)."""
    return FLOptions(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(FLOptions)})


def loss_targets(source: ImageSource, labels: Tensor, loss: Loss) -> Tensor:
    """The source's class ids in the loss's label space (binary for the paper's logistic loss)."""
    return loss.encode_labels(labels, source.binary_label)


def make_loader(source: ImageSource, indices: Tensor, loss: Loss, batch_size: int, seed: int, shuffle: bool = True):
    """Batches of (images, targets) converted a whole batch at a time (one vectorised transform per batch)."""

    def collate(idx: list[int]) -> tuple[Tensor, Tensor]:
        inputs, labels = source.dataset.batch(torch.as_tensor(idx, dtype=torch.int64))
        return inputs, loss_targets(source, labels, loss)

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(indices.tolist(), batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate)


def partition(labels: Tensor, num_clients: int, scheme: str = "iid", alpha: float = 0.5, seed: int = 0) -> list[Tensor]:
    """Disjoint index sets, one per client, that together hold every index exactly once."""
    if num_clients < 1:
        raise ConfigError(f"fl.num_clients must be >= 1, got {num_clients}")
    n = len(labels)
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [torch.as_tensor(np.sort(s)) for s in np.array_split(rng.permutation(n), num_clients)]
    if scheme != "dirichlet":
        raise ConfigError(f"fl.partition must be one of {PARTITIONS}, got {scheme!r}")
    if alpha <= 0:
        raise ConfigError(f"fl.alpha must be > 0, got {alpha}")
    labels_np = labels.numpy()
    shards: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in np.unique(labels_np):
        members = rng.permutation(np.flatnonzero(labels_np == c))
        shares = rng.dirichlet(np.full(num_clients, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(int)
        for client, part in enumerate(np.split(members, cuts)):
            shards[client].append(part)
    return [torch.as_tensor(np.sort(np.concatenate(s))).long() for s in shards]


def partition_stats(labels: Tensor, shards: list[Tensor], num_classes: int) -> dict:
    """Per-client sizes and class histograms, and each client's largest class share (1.0 = a single class)."""
    hist = torch.stack([torch.bincount(labels[s], minlength=num_classes) for s in shards])
    sizes = hist.sum(1)
    dominant = (hist.max(1).values / sizes.clamp(min=1)).tolist()
    return {"sizes": sizes.tolist(), "class_counts": hist.tolist(), "dominant_share": dominant}


class FederatedDataModule(L.LightningDataModule):
    """A data plugin's dataset split among clients; `train_dataloader()` serves client `client`'s shard."""

    def __init__(
        self,
        source: ImageSource,
        num_clients: int = 1,
        partition: str = "iid",
        alpha: float = 0.5,
        seed: int = 0,
        batch_size: int = 8,
        loss: str = "binary_logistic",
        client: int = 0,
    ) -> None:
        super().__init__()
        if not 0 <= client < num_clients:
            raise ConfigError(f"fl.client must be between 0 and fl.num_clients - 1, got {client}")
        self.source = source
        self.num_clients = num_clients
        self.scheme = partition
        self.alpha = alpha
        self.seed = seed
        self.batch_size = batch_size
        self.loss = make_loss(loss)  # only its label space matters here
        self.client = client
        self.shards: list[Tensor] = []

    def setup(self, stage: str | None = None) -> None:
        if not self.shards:
            self.shards = partition(self.source.dataset.labels, self.num_clients, self.scheme, self.alpha, self.seed)

    def shard(self, client: int | None = None) -> Tensor:
        self.setup()
        return self.shards[self.client if client is None else client]

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.source, self.shard(), self.loss, self.batch_size, self.seed)

    def stats(self) -> dict:
        self.setup()
        return partition_stats(self.source.dataset.labels, self.shards, self.source.num_classes)

    def private_batch(self, seed: int, client: int | None = None) -> PrivateBatch:
        """A client's private samples (the attacked one's by default), taken from its own shard (data.index counts
        within the shard)."""
        client = self.client if client is None else client
        shard = self.shard(client)
        size = self.source.batch_size
        if not 1 <= size <= len(shard):
            raise ConfigError(f"client {client} holds {len(shard)} samples, fewer than data.batch_size={size}")
        if self.source.index is not None:
            picks = (self.source.index + torch.arange(size)) % len(shard)
        else:
            picks = torch.randperm(len(shard), generator=torch.Generator().manual_seed(seed))[:size]
        indices = shard[picks]
        inputs, labels = self.source.dataset.batch(indices)
        return PrivateBatch(inputs, labels, self.source.binary_label(labels).long(), indices, self.source.name)
