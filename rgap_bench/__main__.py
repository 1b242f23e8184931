"""Entry point: `python -m rgap_bench attack=rgap model=cnn6` (Hydra: add -m for sweeps, --help for groups)."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from rgap_bench.config import register_schemas

register_schemas()


@hydra.main(version_base="1.3", config_path="pkg://rgap_bench.conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from rgap_bench.task import run_task

    run_task(cfg)


if __name__ == "__main__":
    main()
