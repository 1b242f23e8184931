"""MNIST from a directory in torchvision's raw layout (IDX files, optionally gzipped), never downloaded."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rgap_bench.data.base import DataOptions, ImageSource, dataset_format_error, dataset_not_found

FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
IDX_DTYPES = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain or .gz): magic 0, 0, type byte, ndim; ndim big-endian int32 sizes; data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: header promises {expected} bytes for shape {shape}, file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


REFETCH = "Download the IDX files again from a MNIST mirror (gzipped or not) and replace this one."


def read_mnist_file(path: Path) -> np.ndarray:
    """`read_idx` with any failure (truncated, not gzip, not IDX) as one `DatasetFormatError` naming the file."""
    try:
        return read_idx(path)
    except (ValueError, EOFError, OSError) as exc:  # gzip.BadGzipFile is an OSError
        raise dataset_format_error("MNIST", path, exc, REFETCH) from exc


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_mnist_files(root: str | Path | None, train: bool) -> tuple[Path, Path]:
    """(images, labels) paths from `root/MNIST/raw`, `root/raw` or `root`, uncompressed preferred to .gz."""
    candidates = (
        []
        if root is None
        else [
            Path(root).expanduser() / "MNIST" / "raw",
            Path(root).expanduser() / "raw",
        ]
    )
    candidates += [] if root is None else [Path(root).expanduser()]
    for folder in candidates:
        images, labels = (_find(folder, name) for name in FILES[train])
        if images is not None and labels is not None:
            return images, labels
    image_file, label_file = FILES[train]
    raise dataset_not_found(
        f"MNIST ({'train' if train else 'test'} split)",
        root,
        candidates,
        f"torchvision's raw layout <dir>/MNIST/raw/{{{image_file}, {label_file}}} (each may be .gz); "
        "the two files may also sit in <dir>/raw or directly in <dir>",
        "download the four IDX files from a MNIST mirror yourself",
    )


@dataclass
class MNISTOptions(DataOptions):
    name: str = "mnist"
    image_size: int = 28
    channels: int = 1


class MNISTFolder(ImageSource):
    """MNIST (28x28 gray). Binary label: 1 for digits 5-9, 0 for 0-4."""

    Options = MNISTOptions
    CLASS_NAMES = tuple(str(d) for d in range(10))

    def _load(self) -> tuple[Tensor, Tensor]:
        image_path, label_path = find_mnist_files(self.root, self.train)
        images, labels = read_mnist_file(image_path), read_mnist_file(label_path)
        if images.ndim != 3 or labels.shape != (images.shape[0],):
            problem = f"images of shape {images.shape} do not match labels of shape {labels.shape} in {label_path}"
            raise dataset_format_error("MNIST", image_path, problem, REFETCH)
        return torch.from_numpy(images.astype(np.uint8)).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))

    def binary_label(self, labels: Tensor) -> Tensor:
        return (labels >= 5).long()
