"""What a results file records about where its numbers came from."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

import torch

PACKAGES = (
    "rgap_bench",
    "torch",
    "torchvision",
    "lightning",
    "hydra-core",
    "torchmetrics",
    "numpy",
    "scipy",
    "wandb",
)


def package_versions() -> dict[str, str]:
    """Python, the packages that produce or score a number, and the CUDA/cuDNN builds torch runs on."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    found["torch_cuda"] = torch.version.cuda or "none"
    found["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none"
    return found
