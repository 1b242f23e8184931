"""Server state before the attacked round: the global model, optionally trained for a few epochs first.

Attacks on a freshly initialised network flatter them; `pretrain.epochs=N` trains the global model with Lightning
on the data plugin's dataset (the attacked samples left out by default) and caches the weights as a state_dict,
loaded back with `torch.load(weights_only=True)` so a checkpoint can never run code.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rgap_bench.data.base import ImageSource
from rgap_bench.errors import CheckpointError, ConfigError
from rgap_bench.fl.data import loss_targets, make_loader
from rgap_bench.fl.training import SupervisedModule, accuracy, fit
from rgap_bench.logging import atomic_write
from rgap_bench.losses import Loss

log = logging.getLogger(__name__)

FLOAT32_MAX = float(torch.finfo(torch.float32).max)  # a larger step size overflows torch's SGD in float32
EVAL_LIMIT = 2000  # samples used to measure the accuracy reached (a CPU-friendly estimate on big datasets)


@dataclass
class PretrainOptions:
    """Server state before the attacked round (`pretrain.*`): `epochs: 0` attacks the freshly initialised model, or
    the weights in `checkpoint` when one is given."""

    epochs: int = 0
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 16
    # a state_dict path: loaded if it exists, else trained and written (null = <run dir>/pretrained.pt); with
    # epochs: 0 it must exist and its weights are attacked as saved
    checkpoint: str | None = None
    exclude_private: bool = True  # keep the attacked sample(s) out of the server's training data

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"pretrain.epochs must be >= 0 (0 = no pretraining), got {self.epochs}")
        if not 0 < self.lr <= FLOAT32_MAX or self.batch_size < 1 or not 0 <= self.momentum <= FLOAT32_MAX:
            raise ConfigError(
                f"pretrain.lr must be > 0 and finite in float32 (<= {FLOAT32_MAX:.3g}), pretrain.batch_size >= 1 and "
                f"pretrain.momentum >= 0, got {self.lr}, {self.batch_size}, {self.momentum}"
            )


def pretrain_options(cfg: Any) -> PretrainOptions:
    """Validated options from any object carrying the fields (the `pretrain` config node, a namespace)."""
    if isinstance(cfg, PretrainOptions):
        return cfg
    return PretrainOptions(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(PretrainOptions)})


def save_checkpoint(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    with atomic_write(path) as tmp:  # an interrupted save never leaves a truncated checkpoint to load next time
        torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp)


def _load_problem(exc: BaseException) -> str:
    """The informative part of torch.load's error: its weights-only messages bury the cause after a long preamble."""
    text = " ".join(str(exc).split())
    if "WeightsUnpickler error:" in text:  # torch >= 2.6: the refused content comes after this marker
        text = text.split("WeightsUnpickler error:", 1)[1].split(" Check the documentation", 1)[0].strip()
        return f"not a plain weights file: {text}"
    if not text:
        return "the file is empty or ends early" if isinstance(exc, EOFError) else type(exc).__name__
    return text.split(". ", 1)[0][:160]


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The saved dict; anything torch cannot load with `weights_only=True`, or that is not ours, is one error."""
    fix = "delete it (pretrain.epochs > 0 then trains and writes it again) or point pretrain.checkpoint elsewhere"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read ({_load_problem(exc)}): it is corrupt or not a weights file; {fix}"
        ) from exc
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise CheckpointError(
            f"checkpoint '{path}' is not an rgap_bench checkpoint (a dict with 'state_dict' and 'meta'); {fix}"
        )
    return state


def _mismatch(model: nn.Module, saved: dict[str, Any]) -> str | None:
    """What differs between the model's parameters and the saved ones (names and shapes), or None."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) if hasattr(v, "shape") else None for k, v in saved.items()}
    problems = []
    if missing := sorted(own.keys() - theirs.keys()):
        problems.append(f"missing {missing[:3]}")
    if unexpected := sorted(theirs.keys() - own.keys()):
        problems.append(f"unexpected {unexpected[:3]}")
    shapes = [f"{k} saved {theirs[k]} vs model {own[k]}" for k in own.keys() & theirs.keys() if own[k] != theirs[k]]
    if shapes:
        problems.append("shape " + "; ".join(sorted(shapes)[:3]))
    return ", ".join(problems) or None


def load_checkpoint(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load weights saved by `save_checkpoint` (tensors and plain values only); returns the saved metadata."""
    state = _read_checkpoint(path)
    meta = state.get("meta", {})
    meta = dict(meta) if isinstance(meta, dict) else {}
    mismatch = _mismatch(model, state["state_dict"])
    if mismatch:
        saved_for = f" (saved for model {meta['model']!r})" if "model" in meta else ""
        raise CheckpointError(
            f"checkpoint '{path}'{saved_for} holds weights of another architecture than "
            f"{getattr(model, 'name', type(model).__name__)!r}: {mismatch}; choose the model it was trained for, "
            "or another pretrain.checkpoint"
        )
    model.load_state_dict(state["state_dict"])
    return meta


def _load_given(model: nn.Module, path: Path) -> dict[str, Any]:
    """`pretrain.epochs=0 pretrain.checkpoint=PATH`: attack the weights in PATH, which must exist."""
    if not path.is_file():
        raise CheckpointError(
            f"pretrain.checkpoint '{path}' does not exist and pretrain.epochs=0 would not train it: give an existing "
            "checkpoint, or set pretrain.epochs to a positive number to train the model and write it there"
        )
    saved = load_checkpoint(model, path)
    log.info("loaded global model from %s (pretrain.epochs=0: used as saved)", path)
    return {**saved, "checkpoint": str(path), "loaded": True}


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

    The server trains on the batch mean of the client's loss, whatever reduction the client uses. With `epochs: 0`
    a given checkpoint is loaded as it is (the server's state comes from elsewhere); it must exist.
    """
    cfg = pretrain_options(cfg)
    if cfg.epochs == 0:
        if not cfg.checkpoint:
            return {"epochs": 0}
        return _load_given(model, Path(cfg.checkpoint))
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
