"""Shared fixtures: offline W&B, tiny updates built the way a client builds them."""

from __future__ import annotations

import pytest
import torch

from rgap_bench.config import register_schemas
from rgap_bench.data.photos import EmbeddedPhotos
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.types import ClientUpdate, PrivateBatch

register_schemas()


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    wandb_home = tmp_path_factory.mktemp("wandb_home")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_home))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(wandb_home / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(wandb_home / "config"))


def photo_batch(image_size: int = 32, channels: int = 3, index: int = 0) -> PrivateBatch:
    return EmbeddedPhotos(name="photos", image_size=image_size, channels=channels, index=index).private_batch(0)


def make_update(
    model: torch.nn.Module,
    batch: PrivateBatch,
    share_labels: bool = True,
    label_policy: str = "flip_prediction",
) -> ClientUpdate:
    client = FedSGDClient(model, share_labels=share_labels, label_policy=label_policy)
    return client.compute_update(batch)


def psnr(reconstruction: torch.Tensor, original: torch.Tensor) -> float:
    mse = float(((reconstruction.clamp(0, 1) - original) ** 2).mean())
    return 100.0 if mse == 0 else min(100.0, 10 * torch.log10(torch.tensor(1.0 / mse)).item())
