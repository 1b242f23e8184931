"""Every config group option composes against its schema and instantiates; bad keys fail at compose time."""

import dataclasses
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.data.base import DatasetNotFoundError, ImageSource
from rgap_bench.errors import ConfigError
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.logging.base import RunLogger
from rgap_bench.models.layers import SequentialNet
from rgap_bench.rank.config import register_rank_schemas

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("model", "data", "client", "attack", "defense", "logger")
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]
PRIMARY = ("config", "rank")  # composed whole below; conf/hydra/* comes with return_hydra_config
DISK_DATASETS = {"cifar10", "mnist"}


@pytest.fixture(scope="module")
def hydra_conf():
    with initialize_config_module(config_module="rgap_bench.conf", version_base="1.3"):
        yield


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)


def test_every_yaml_file_is_composed_by_a_test():
    """A new group or primary config must be added here, so that it is composed below too."""
    covered = {f"{g}/{o}.yaml" for g, o in OPTIONS} | {f"{p}.yaml" for p in PRIMARY}
    covered |= {f"hydra/{p.parent.name}/{p.name}" for p in CONF.glob("hydra/*/*.yaml")}
    # sweep presets and the architectures they sweep: composed value by value in test_sweeps.py
    covered |= {str(p.relative_to(CONF)) for g in ("experiment", "arch") for p in CONF.glob(f"{g}/*.yaml")}
    # attack=fast/<name>: composed against its attack in test_sweeps.py
    covered |= {str(p.relative_to(CONF)) for p in CONF.glob("attack/fast/*.yaml")}
    assert {str(p.relative_to(CONF)) for p in CONF.rglob("*.yaml")} == covered


def test_primary_configs_and_hydra_options_compose(hydra_conf):
    register_rank_schemas()
    cfg = compose(config_name="config", return_hydra_config=True)
    assert cfg.hydra.help.app_name and cfg.hydra.job_logging.version == 1
    rank = compose(config_name="rank", overrides=["model=cnn6d"])
    assert rank.rank.rcond == 1e-10 and rank.model.name == "cnn6d"


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_instantiates(hydra_conf, group, option):
    overrides = [f"{group}={option}"]
    if group == "model" and option == "fcn3":
        overrides.append("data=digits")
    cfg = compose(config_name="config", overrides=overrides)
    node = cfg[group]
    if group == "defense":  # the run-level node, plus one parameter node per selected defence
        assert [k for k, v in node.items() if isinstance(v, DictConfig)] == ([] if option == "none" else [option])
    else:
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


def test_hgap_reaches_every_rgap_and_matching_option(hydra_conf):
    overrides = [
        "attack=hgap",
        "attack.rgap.rcond=1e-9",
        "attack.rgap.solver=dense",
        "attack.matching.max_iterations=50",
    ]
    cfg = compose(config_name="config", overrides=overrides)
    assert set(cfg.attack.rgap) == {f.name for f in dataclasses.fields(RGAPOptions)}
    attack = instantiate(cfg.attack)
    assert (attack.rgap.options.rcond, attack.rgap.options.solver, attack.matcher.settings.max_iterations) == (
        1e-9,
        "dense",
        50,
    )
    assert attack.matcher.settings.box == (0.0, 1.0) and attack.matcher.options.labels == "infer"
    assert attack.matcher.options.restarts == 1 + cfg.attack.random_restarts
    with pytest.raises(ConfigCompositionException, match="rcnod"):
        compose(config_name="config", overrides=["attack=hgap", "attack.rgap.rcnod=1e-9"])
    with pytest.raises(ConfigCompositionException, match="max_iteration"):
        compose(config_name="config", overrides=["attack=hgap", "attack.max_iterations=50"])  # now under matching


def test_each_defence_has_its_own_node(hydra_conf):
    cfg = compose(config_name="config", overrides=["defense=[pruning,gaussian]", "defense.gaussian.sigma=0.5"])
    assert (cfg.defense.gaussian.sigma, cfg.defense.pruning.ratio) == (0.5, 0.9)
    assert [k for k, v in cfg.defense.items() if isinstance(v, DictConfig)] == ["pruning", "gaussian"]
    assert "laplace" not in cfg.defense and "sigma" not in cfg.defense  # no parameters of defences that did not run
    with pytest.raises(ConfigCompositionException, match="sigmaa"):
        compose(config_name="config", overrides=["defense=gaussian", "defense.gaussian.sigmaa=1"])
    with pytest.raises(ConfigCompositionException):
        compose(config_name="config", overrides=["defense=gaussian", "defense.gaussian.sigma=abc"])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["defense=gaussian", "defense.sigma=1e-3"], "defense.sigma is neither"),  # the old flat spelling
        (["defense=gaussian", "defense.pruning.ratio=0.5"], "defense.pruning is neither"),  # not selected
        (["defense=gaussian", "defense.utilty=true"], "utility_epochs"),  # the message lists the valid settings
        (["defense=gaussian", "+defense.gaussian.sigmaa=1"], "sigmaa"),  # '+' bypasses the schema
    ],
)
def test_stray_defence_keys_fail_when_the_pipeline_is_built(hydra_conf, overrides, match):
    cfg = compose(config_name="config", overrides=overrides)
    with pytest.raises(InstantiationException) as info:
        instantiate(cfg.defense)
    assert isinstance(info.value.__cause__, ConfigError)
    assert re.search(match, str(info.value.__cause__))


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
