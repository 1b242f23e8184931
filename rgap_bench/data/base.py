"""Shared machinery of the data plugins: tensor preparation, private-batch sampling, missing-data errors.

Every plugin keeps its images in their native form (uint8 or float, native size and channels) and converts
them on access, so a 50 000-image disk dataset costs its uint8 size in memory, not a float copy per setting.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from rgap_bench.errors import ConfigError, DatasetFormatError, DatasetNotFoundError
from rgap_bench.options import build_options
from rgap_bench.types import PrivateBatch

log = logging.getLogger(__name__)

# ITU-R BT.601 luma weights, the convention of PIL's "L" mode and of torchvision's rgb_to_grayscale.
LUMA_601 = (0.299, 0.587, 0.114)


def dataset_not_found(
    dataset: str,
    root: str | Path | None,
    looked_in: Sequence[Path],
    expected: str,
    fetch_hint: str,
) -> DatasetNotFoundError:
    """Build the one message a user needs: where we looked, which files in which layout, how to fix it."""
    where = (
        "no directory was given (data.root is null)"
        if root is None
        else "looked in " + ", ".join(f"'{p}'" for p in looked_in)
    )
    return DatasetNotFoundError(
        f"{dataset} not found: {where}. Expected {expected}. rgap_bench never downloads data: {fetch_hint} "
        "and pass the directory with data.root=/path/to/dir. "
        "data=photos and data=digits work without any files."
    )


def dataset_format_error(dataset: str, path: Path, problem: object, fix: str) -> DatasetFormatError:
    """One line naming the file, what is wrong with it and how to get a good copy."""
    detail = " ".join(str(problem).split()) or type(problem).__name__
    return DatasetFormatError(
        f"{dataset} file '{path}' cannot be read ({detail}): it is truncated, corrupt or not in the expected "
        f"format. {fix}"
    )


def to_float_images(images: Tensor, channels: int, image_size: int) -> Tensor:
    """Turn a (B, C, H, W) uint8 or float batch into float32 in [0, 1] with the requested channels and size.

    Channels are converted before resizing so RGB->gray resizes a third of the data.
    """
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    if x.shape[1] != channels:
        if x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and channels == 1:
            x = torch.tensordot(x, x.new_tensor(LUMA_601), dims=([1], [0])).unsqueeze(1)
        else:
            raise ValueError(f"cannot convert {x.shape[1]} channels to {channels}")
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(
            x,
            size=(image_size, image_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
    return x.clamp(0.0, 1.0).contiguous()


class ImageDataset(Dataset[tuple[Tensor, int]]):
    """Native images plus a batch transform; items are `(float image (C, S, S), int label)`."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
        self.images = images
        self.labels = labels.long()
        self.transform = transform

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        i = range(len(self))[i]  # negative indices and bounds checks like a list
        return self.transform(self.images[i : i + 1])[0], int(self.labels[i])

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Gather and convert many items at once (one vectorised transform instead of B)."""
        return self.transform(self.images[indices]), self.labels[indices]


@dataclass
class DataOptions:
    """What every data plugin takes; each plugin's subclass sets its own name and native shape (the single home of
    those defaults: the `data=<name>` schema subclasses it)."""

    name: str = "data"
    root: str | None = None  # directory holding a torchvision-format dataset (disk datasets only)
    train: bool = True  # which split of a disk dataset
    image_size: int = 32
    channels: int = 3
    batch_size: int = 1
    index: int | None = 0  # first sample of the private batch; null draws the batch at random from the seed

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ConfigError(f"data.image_size must be >= 1, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"data.channels must be 1 or 3, got {self.channels}")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size}")


class ImageSource(ABC):
    """A dataset plugin: built from the `data` config group's fields, it yields the client's private batch.

    Subclasses set `CLASS_NAMES` and implement `_load` (native images and labels) and `binary_label`;
    `_load` may replace `self.class_names` with names read from the data.
    """

    CLASS_NAMES: ClassVar[tuple[str, ...]]
    Options: ClassVar[type[DataOptions]] = DataOptions

    def __init__(self, options: DataOptions | None = None, /, **overrides: Any) -> None:
        self.options = opts = build_options(self.Options, options, overrides)
        self.name = name = opts.name
        self.root = opts.root
        self.train = opts.train
        self.image_size = opts.image_size
        self.channels = opts.channels
        self.batch_size = opts.batch_size
        self.index = opts.index
        self.class_names: list[str] = list(self.CLASS_NAMES)
        images, labels = self._load()
        self.dataset = ImageDataset(images, labels, self._transform)
        self._check_batch_size()
        log.debug(
            "%s: %d samples, native shape %s",
            name,
            len(self.dataset),
            tuple(images.shape[1:]),
        )

    @abstractmethod
    def _load(self) -> tuple[Tensor, Tensor]:
        """Return native images (N, C, H, W) as uint8 0..255 or float 0..1, and int labels (N,)."""

    @abstractmethod
    def binary_label(self, labels: Tensor) -> Tensor:
        """Map class ids to {0, 1}: the two-class task the paper's models are trained on."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _transform(self, images: Tensor) -> Tensor:
        return to_float_images(images, self.channels, self.image_size)

    def _check_batch_size(self) -> None:
        n = len(self.dataset)
        if not 1 <= self.batch_size <= n:
            raise ConfigError(
                f"data.batch_size must be between 1 and the dataset size {n} ({self.name}), got {self.batch_size}; "
                "lower data.batch_size"
            )

    def batch_indices(self, seed: int) -> Tensor:
        """Consecutive indices from `index` (wrapping), or `batch_size` distinct ones drawn from `seed`."""
        self._check_batch_size()
        n = len(self.dataset)
        if self.index is not None:
            return (self.index + torch.arange(self.batch_size, dtype=torch.int64)) % n
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(n, generator=generator)[: self.batch_size]

    def private_batch(self, seed: int) -> PrivateBatch:
        """The client's private samples for one run."""
        indices = self.batch_indices(seed)
        inputs, labels = self.dataset.batch(indices)
        return PrivateBatch(
            inputs=inputs,
            labels=labels,
            binary_labels=self.binary_label(labels).long(),
            indices=indices,
            dataset=self.name,
        )
