"""Every attack option builds an object the runner can use through the `Attack` protocol alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from rgap_bench.attacks.base import Attack

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "attack").glob("*.yaml")))
def test_every_attack_option_builds_an_attack(option):
    """The runner relies on the `Attack` protocol alone (name, update_kinds, __call__): no getattr fallbacks."""
    with initialize_config_module("rgap_bench.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"attack={option}"])
    attack = instantiate(cfg.attack)
    assert isinstance(attack, Attack)
    assert attack.name == option and "gradient" in type(attack).update_kinds
