"""Schema of `python -m rgap_bench.rank` (conf/rank.yaml); kept here so the run schema stays untouched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class RankSettings:
    probe: str = "input"  # input | gaussian: where the back-propagated errors k come from
    numeric: bool = True  # false: counts and bound only (instant)
    dense_max: int = 4000  # exact dense rank / sigma up to this many unknowns; beyond, structure or the bound
    rcond: float = 1e-10  # relative eigenvalue cut-off of the normal matrix (as R-GAP)


@dataclass
class RankRunConfig:
    model: Any = MISSING
    data: Any = MISSING
    logger: Any = MISSING
    rank: RankSettings = MISSING
    seed: int = 0
    print_summary: bool = True


def register_rank_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(group="schema", name="rank_run", node=RankRunConfig)
    cs.store(group="schema/rank", name="settings", node=RankSettings)
