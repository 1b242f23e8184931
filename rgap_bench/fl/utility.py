"""The utility side of a defence: what accuracy a model reaches when every training step is defended.

Privacy numbers alone cannot rank defences (sigma = 1 stops every attack and every learning); `defense.utility=true`
trains a copy of the global model for a few epochs with the configured defence applied to each step's gradient and
reports held-out accuracy, so a sweep shows both sides of the trade-off. DP-SGD's epsilon here covers all the
training steps, with sampling rate batch size / training-set size (shuffled batches stand in for Poisson sampling).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from rgap_bench.data.base import ImageSource
from rgap_bench.errors import ConfigError
from rgap_bench.fl.data import loss_targets, make_loader
from rgap_bench.fl.training import SupervisedModule, accuracy, fit
from rgap_bench.losses import Loss


def evaluate_utility(
    model: nn.Module,
    defense_cfg: Any,
    source: ImageSource,
    loss: Loss,
    exclude: Tensor,
    device: torch.device,
    seed: int,
) -> dict[str, Any]:
    """Train a copy of `model` with a fresh instance of the defence; returns test accuracy and the defence's report.

    Training averages the client's loss over each batch, whatever reduction the client uses.
    """
    loss = loss.with_reduction("mean")
    n = len(source.dataset)
    keep = torch.ones(n, dtype=torch.bool)
    keep[exclude] = False
    pool = torch.arange(n)[keep]
    pool = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))]
    n_test = round(defense_cfg.utility_test_fraction * len(pool))
    if not 0 < n_test < len(pool):
        raise ConfigError(f"defense.utility_test_fraction leaves no train or test data ({len(pool)} samples)")
    test, train = pool[:n_test], pool[n_test:]
    defense = instantiate(defense_cfg)  # fresh generators and step counters
    module = SupervisedModule(
        copy.deepcopy(model).train(), loss, defense_cfg.utility_lr, defense=defense, dataset_size=len(train)
    )
    loader = make_loader(source, train, loss, defense_cfg.utility_batch_size, seed)
    torch.manual_seed(seed)
    fit(module, loader, device, max_epochs=defense_cfg.utility_epochs)
    inputs, labels = source.dataset.batch(test)
    result: dict[str, Any] = {
        "test_acc": accuracy(module.model, loss, inputs, loss_targets(source, labels, loss)),
        "epochs": defense_cfg.utility_epochs,
        "steps": len(module.history),
        "train_samples": len(train),
        "test_samples": len(test),
        **module.epoch_summary(last=len(loader)),
    }
    epsilon = defense.epsilon() if hasattr(defense, "epsilon") else None
    if epsilon is not None:
        result["epsilon"] = epsilon
    result["defense"] = defense.report()
    return result
