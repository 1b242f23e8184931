"""Shared fixtures: offline W&B, tiny updates built the way a client builds them, the CLI as a user runs it.

Test modules never import each other (nor this file): what several modules share is a fixture here, so each
module can be run, moved or deleted on its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from rgap_bench.config import register_schemas
from rgap_bench.data.photos import EmbeddedPhotos
from rgap_bench.fl.client import FedSGDClient
from rgap_bench.linalg.activations import PiecewiseLinear
from rgap_bench.linalg.constraints import ConvGeometry
from rgap_bench.linalg.operators import ConvSystem
from rgap_bench.models import build_convnet
from rgap_bench.types import ClientUpdate, PrivateBatch

register_schemas()

CONV_CASES = [  # (in_shape, filters, kernel, stride, padding): square and not, padded and not, kernel < and > stride
    ((2, 6, 6), 3, (3, 3), (1, 1), (1, 1)),
    ((3, 7, 5), 4, (2, 3), (2, 1), (1, 2)),
    ((1, 8, 8), 2, (4, 4), (2, 2), (2, 2)),
    ((4, 5, 5), 6, (3, 3), (2, 2), (0, 0)),
]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that takes `conv_case` runs once per layer geometry of CONV_CASES (CPU and GPU tests alike)."""
    if "conv_case" in metafunc.fixturenames:
        metafunc.parametrize("conv_case", CONV_CASES, ids=[f"conv{i}" for i in range(len(CONV_CASES))])


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    wandb_home = tmp_path_factory.mktemp("wandb_home")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_home))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(wandb_home / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(wandb_home / "config"))


def _photo_batch(image_size: int = 32, channels: int = 3, index: int = 0) -> PrivateBatch:
    return EmbeddedPhotos(name="photos", image_size=image_size, channels=channels, index=index).private_batch(0)


def _make_update(
    model: torch.nn.Module,
    batch: PrivateBatch,
    share_labels: bool = True,
    label_policy: str = "flip_prediction",
) -> ClientUpdate:
    client = FedSGDClient(model, share_labels=share_labels, label_policy=label_policy)
    return client.compute_update(batch)


def _psnr(reconstruction: torch.Tensor, original: torch.Tensor) -> float:
    mse = float(((reconstruction.clamp(0, 1) - original) ** 2).mean())
    return 100.0 if mse == 0 else min(100.0, 10 * torch.log10(torch.tensor(1.0 / mse)).item())


def _run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "-m", "rgap_bench", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def _compose(*overrides: str) -> DictConfig:
    with initialize_config_module("rgap_bench.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _make_conv_system(in_shape, filters, kernel, stride, padding, scale_rows=True, seed=0):
    """A conv layer's system at a random input x (returned too), with random weights and output gradient k."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(filters, in_shape[0], *kernel, dtype=torch.float64, generator=gen)
    x = torch.randn(in_shape, dtype=torch.float64, generator=gen)
    geom = ConvGeometry(in_shape, kernel, stride, padding)
    z = F.conv2d(x[None], weight, stride=stride, padding=padding)[0]
    k = torch.randn(z.shape, dtype=torch.float64, generator=gen)
    grad = torch.nn.grad.conv2d_weight(x[None], weight.shape, k[None], stride, padding)
    return ConvSystem(weight, k, grad, z, geom, scale_rows), x


@pytest.fixture(scope="session")
def photo_batch() -> Callable[..., PrivateBatch]:
    """`photo_batch(image_size, channels, index)`: one embedded photo as the private batch."""
    return _photo_batch


@pytest.fixture(scope="session")
def make_update() -> Callable[..., ClientUpdate]:
    """`make_update(model, batch, share_labels, label_policy)`: the FedSGD update a client shares."""
    return _make_update


@pytest.fixture(scope="session")
def psnr() -> Callable[[torch.Tensor, torch.Tensor], float]:
    """A reference PSNR independent of rgap_bench.metrics (clamped, peak 1, capped at 100 dB)."""
    return _psnr


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess]:
    """`run_cli(*overrides, tmp_path=...)`: `python -m rgap_bench` in a subprocess, offline, output captured."""
    return _run_cli


@pytest.fixture(scope="session")
def compose_config() -> Callable[..., DictConfig]:
    """`compose_config(*overrides)`: the run's config as the CLI composes it, without running anything."""
    return _compose


@pytest.fixture(scope="session")
def make_conv_system() -> Callable[..., tuple[ConvSystem, torch.Tensor]]:
    return _make_conv_system


@pytest.fixture
def single_thread():
    """One intra-op thread for toy-sized tensors: on a busy 2-core machine two spinning OpenMP threads made the
    2000-step IG test 10-20x slower (the result is bitwise the same either way)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _deficient_over_surplus(seed: int) -> torch.nn.Module:
    """conv 1>8 (surplus equations) below conv 8>2 s2 (340 of its 512 input directions free), on 8x8 gray."""
    torch.manual_seed(seed)
    return build_convnet(
        [
            {"kind": "conv", "out": 8, "kernel": 3, "stride": 1, "padding": 1},
            {"kind": "conv", "out": 2, "kernel": 3, "stride": 2, "padding": 1},
            {"kind": "linear", "out": 1, "activation": "identity"},
        ],
        in_channels=1,
        image_size=8,
    )


@pytest.fixture(scope="session")
def deficient_over_surplus() -> Callable[[int], torch.nn.Module]:
    """`deficient_over_surplus(seed)`: the toy net whose deficient conv is completed jointly with the conv below."""
    return _deficient_over_surplus


def _two_layer_problem(seed: int = 0, d: int = 5, filters: int = 4, padding: int = 1):
    """A conv (2x6x6 in, k3 s1) under a deficient layer with d free directions: (weight, grad, geom, act, back_k,
    x_min, null, x_lower, x_upper), the deficient layer's minimum-norm answer x_min missing x_upper by a null-space
    component small enough to keep every sign. padding=2 makes the conv full (its Fourier symbol can bound it)."""
    gen = torch.Generator().manual_seed(seed)
    act = PiecewiseLinear(0.2)
    geom = ConvGeometry((2, 6, 6), (3, 3), (1, 1), (padding, padding))
    weight = torch.randn(filters, 2, 3, 3, dtype=torch.float64, generator=gen)
    x_lower = torch.rand(2, 6, 6, dtype=torch.float64, generator=gen)
    z = F.conv2d(x_lower[None], weight, padding=padding)[0]
    x_upper = torch.where(z < 0, 0.2 * z, z).reshape(-1)
    back_k = torch.randn(x_upper.shape, dtype=torch.float64, generator=gen)  # dL/d(x_upper), from the layer above
    k_lower = (back_k * act.derivative(act.inverse(x_upper))).reshape(z.shape)
    grad = torch.nn.grad.conv2d_weight(x_lower[None], weight.shape, k_lower[None], padding=padding)
    null = torch.linalg.qr(torch.randn(x_upper.numel(), d, dtype=torch.float64, generator=gen)).Q
    offset = null @ torch.randn(d, dtype=torch.float64, generator=gen)
    offset *= 0.5 * float(x_upper.abs().min()) / float(offset.abs().max())
    return weight, grad, geom, act, back_k, x_upper - offset, null, x_lower, x_upper


@pytest.fixture(scope="session")
def two_layer_problem() -> Callable[..., tuple]:
    """`two_layer_problem(seed, d, filters, padding)`: the joint null-space solve's test problem."""
    return _two_layer_problem


def pytest_configure(config: pytest.Config) -> None:
    """Property and fuzz tests (hypothesis) draw the same examples on every run, so a failure in CI reproduces
    locally; HYPOTHESIS_PROFILE=explore draws fresh ones on every run, to hunt for bugs."""
    from hypothesis import settings

    settings.register_profile("suite", derandomize=True, deadline=None, database=None, print_blob=True)
    settings.register_profile("explore", deadline=None, database=None, print_blob=True)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))
