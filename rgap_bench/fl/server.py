"""Server state before the attacked round: the global model, optionally trained for a few epochs first.

Attacks on a freshly initialised network flatter them; `pretrain.epochs=N` trains the global model with Lightning
on the data plugin's dataset (the attacked samples left out by default) and caches the weights as a state_dict,
loaded back with `torch.load(weights_only=True)` so a checkpoint can never run code.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rgap_bench.data.base import ImageSource
from rgap_bench.errors import ConfigError
from rgap_bench.fl.data import loss_targets, make_loader
from rgap_bench.fl.training import SupervisedModule, accuracy, fit
from rgap_bench.logging import atomic_write
from rgap_bench.losses import Loss

log = logging.getLogger(__name__)

EVAL_LIMIT = 2000  # samples used to measure the accuracy reached (a CPU-friendly estimate on big datasets)


def save_checkpoint(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    with atomic_write(path) as tmp:  # an interrupted save never leaves a truncated checkpoint to load next time
        torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)


def load_checkpoint(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load weights saved by `save_checkpoint` (tensors and plain values only); returns the saved metadata."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise ConfigError(f"checkpoint {path} does not fit this model: {exc}") from exc
    return dict(state.get("meta", {}))


def pretrain(
    model: nn.Module,
    cfg: Any,
    source: ImageSource,
    loss: Loss,
    exclude: Tensor,
    run_dir: Path,
    device: torch.device,
    seed: int,
) -> dict[str, Any]:
    """Train `model` in place for `cfg.epochs` epochs (or load the cached result); returns what it reached.

    The server trains on the batch mean of the client's loss, whatever reduction the client uses.
    """
    if cfg.epochs <= 0:
        return {"epochs": 0}
    loss = loss.with_reduction("mean")
    meta = {
        "model": getattr(model, "name", type(model).__name__),
        "dataset": source.name,
        "loss": loss.name,
        "epochs": int(cfg.epochs),
        "lr": float(cfg.lr),
        "momentum": float(cfg.momentum),
        "batch_size": int(cfg.batch_size),
        "seed": int(seed),
        "excluded": exclude.tolist() if cfg.exclude_private else [],
    }
    path = Path(cfg.checkpoint) if cfg.checkpoint else run_dir / "pretrained.pt"
    if path.exists():
        saved = load_checkpoint(model, path)
        stale = {k: (saved.get(k), v) for k, v in meta.items() if k != "excluded" and saved.get(k) != v}
        if stale:
            raise ConfigError(f"checkpoint {path} was trained differently (saved, asked): {stale}; remove it")
        log.info("loaded pretrained global model from %s", path)
        return {**saved, "checkpoint": str(path), "loaded": True}

    n = len(source.dataset)
    keep = torch.ones(n, dtype=torch.bool)
    if cfg.exclude_private:
        keep[exclude] = False
    indices = torch.arange(n)[keep]
    module = SupervisedModule(model, loss, cfg.lr, momentum=cfg.momentum)
    loader = make_loader(source, indices, loss, cfg.batch_size, seed)
    torch.manual_seed(seed)
    fit(module, loader, device, max_epochs=cfg.epochs)
    model.to(device)
    steps_per_epoch = len(loader)
    sample = indices[torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))[:EVAL_LIMIT]]
    inputs, labels = source.dataset.batch(sample)
    meta.update(module.epoch_summary(last=steps_per_epoch))  # running loss/accuracy over the last epoch
    meta["train_acc_eval"] = accuracy(model, loss, inputs, loss_targets(source, labels, loss))
    meta["train_samples"] = len(indices)
    save_checkpoint(model, path, meta)
    log.info(
        "pretrained %s for %d epochs on %d samples: loss %.4f, accuracy %.3f; saved %s",
        meta["model"], cfg.epochs, len(indices), meta["train_loss"], meta["train_acc_eval"], path,
    )  # fmt: skip
    return {**meta, "checkpoint": str(path), "loaded": False}
