"""Dataset plugins of the `data` config group; each yields the client's private batch as a `PrivateBatch`."""

from rgap_bench.data.base import (
    DatasetFormatError,
    DatasetNotFoundError,
    ImageDataset,
    ImageSource,
    to_float_images,
)
from rgap_bench.data.cifar10 import CIFAR10Folder
from rgap_bench.data.digits import EmbeddedDigits
from rgap_bench.data.mnist import MNISTFolder
from rgap_bench.data.photos import EmbeddedPhotos

__all__ = [
    "CIFAR10Folder",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "EmbeddedDigits",
    "EmbeddedPhotos",
    "ImageDataset",
    "ImageSource",
    "MNISTFolder",
    "to_float_images",
]
