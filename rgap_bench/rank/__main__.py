"""`python -m rgap_bench.rank model=cnn6d`: per-layer rank table, `rank.json` and a W&B table, no attack."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rgap_bench.config import register_schemas
from rgap_bench.logging import make_logger
from rgap_bench.rank.config import register_rank_schemas

register_schemas()
register_rank_schemas()
log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://rgap_bench.conf", config_name="rank")
def main(cfg: DictConfig) -> None:
    from rgap_bench.rank.analysis import analyse_model
    from rgap_bench.rank.report import print_rank_table, save_rank

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    logger = make_logger(cfg)
    logger.start(run_dir, OmegaConf.to_container(cfg, resolve=True), run_dir.name)
    torch.manual_seed(cfg.seed)  # the same initial weights an attack run with this seed uses
    model = instantiate(cfg.model)
    settings = cfg.rank
    report = analyse_model(
        model,
        numeric=settings.numeric,
        probe=settings.probe,
        seed=cfg.seed,
        dense_max=settings.dense_max,
        rcond=settings.rcond,
    )
    path = save_rank(report, run_dir, logger)
    logger.finish(exit_code=0)
    log.info("rank analysis of %s in %.2f s -> %s", cfg.model.name, report.time_s, path)
    if cfg.print_summary:
        print_rank_table(report)


if __name__ == "__main__":
    main()
