"""What a results file records about where its numbers came from."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

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
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
