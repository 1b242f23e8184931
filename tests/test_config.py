"""Every config group option composes against its schema and instantiates; bad keys fail at compose time."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from rgap_bench.data.base import DatasetNotFoundError, ImageSource
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.logging.base import RunLogger
from rgap_bench.models.layers import SequentialNet

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("model", "data", "client", "attack", "defense", "logger")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
DISK_DATASETS = {"cifar10", "mnist"}


@pytest.fixture(scope="module")
def hydra_conf():
    with initialize_config_module(config_module="rgap_bench.conf", version_base="1.3"):
        yield


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(hydra_conf, group, option):
    overrides = [f"{group}={option}"]
    if group == "model" and option == "fcn3":
        overrides.append("data=digits")
    cfg = compose(config_name="config", overrides=overrides)
    node = cfg[group]
    assert node.name == option
    OmegaConf.resolve(cfg)
    if group == "data" and option in DISK_DATASETS:
        with pytest.raises(InstantiationException) as info:
            instantiate(node)
        assert isinstance(info.value.__cause__, DatasetNotFoundError)
        assert "never downloads" in str(info.value.__cause__)
        return
    if group == "client":
        obj = instantiate(node, model=instantiate(cfg.model))
        assert isinstance(obj, FedSGDClient)
        return
    obj = instantiate(node)
    expected = {"model": SequentialNet, "data": ImageSource, "logger": RunLogger}.get(group)
    if expected is not None:
        assert isinstance(obj, expected)
    else:
        assert callable(obj)


def test_default_config_is_rgap_on_cnn6(hydra_conf):
    cfg = compose(config_name="config")
    assert (cfg.attack.name, cfg.model.name, cfg.data.name, cfg.logger.mode) == (
        "rgap",
        "cnn6",
        "photos",
        "offline",
    )
    assert cfg.model.in_channels == cfg.data.channels == 3


def test_misspelt_key_fails_at_compose_time(hydra_conf):
    with pytest.raises(ConfigCompositionException, match="sovler"):
        compose(config_name="config", overrides=["attack.sovler=dense"])
    with pytest.raises(ConfigCompositionException, match="shape"):
        compose(config_name="config", overrides=["model=convnet", "model.layers.0.shape=3"])


def test_forced_unknown_key_fails_before_the_attack_runs(hydra_conf):
    cfg = compose(config_name="config", overrides=["+attack.sovler=dense"])  # '+' bypasses the schema
    with pytest.raises(InstantiationException, match="sovler"):
        instantiate(cfg.attack)


def test_wrong_type_fails_at_compose_time(hydra_conf):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose(config_name="config", overrides=["data.batch_size=two"])
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose(config_name="config", overrides=["model=convnet", "model.layers.0.stride=wide"])


def test_root_keys_are_checked_too(hydra_conf):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose(config_name="config", overrides=["seed=abc"])
    with pytest.raises(ConfigCompositionException, match="sed"):
        compose(config_name="config", overrides=["sed=1"])
    cfg = compose(config_name="config")
    assert "schema" not in cfg
    assert cfg.pretrain.epochs == 0 and cfg.fl.num_clients == 1
