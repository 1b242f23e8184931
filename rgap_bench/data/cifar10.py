"""CIFAR-10 from a directory in torchvision's python layout, read without torchvision and never downloaded.

torchvision's own class md5-checks every file (so small files written by tests fail) and offers to download;
this reader only needs the standard pickles.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rgap_bench.data.base import DataOptions, ImageSource, dataset_format_error, dataset_not_found

log = logging.getLogger(__name__)

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only globals a CIFAR pickle references (numpy array reconstruction), under old and new names."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    import _codecs

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    allowed[("_codecs", "encode")] = _codecs.encode  # bytes in protocol-2 pickles written by Python 3
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Refuses every global except numpy's array builders: `root` is user input and pickle runs code."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"CIFAR-10 file references disallowed global {module}.{name}") from None


REFETCH = f"Extract a fresh copy of {FOLDER} from cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/)."


def _read_pickle(path: Path) -> dict[bytes, Any]:
    """The pickled dict of one CIFAR-10 file; a truncated or foreign file is one `DatasetFormatError`."""
    try:
        with path.open("rb") as f:
            content = _CifarUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise dataset_format_error("CIFAR-10", path, exc, REFETCH) from exc
    if not isinstance(content, dict):
        raise dataset_format_error("CIFAR-10", path, f"holds a {type(content).__name__}, not a dict", REFETCH)
    return content


def _read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """Images (N, 3, 32, 32) uint8 and labels of one data/test batch, checked against each other."""
    batch = _read_pickle(path)
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = [int(label) for label in batch[b"labels"]]
    except (KeyError, ValueError, TypeError) as exc:
        problem = f"missing key {exc}" if isinstance(exc, KeyError) else exc
        raise dataset_format_error("CIFAR-10", path, problem, REFETCH) from exc
    if len(labels) != len(data):
        raise dataset_format_error("CIFAR-10", path, f"{len(data)} images but {len(labels)} labels", REFETCH)
    return data, labels


def find_cifar_dir(root: str | Path | None, train: bool) -> Path:
    """The folder holding the batches: `root/cifar-10-batches-py` or `root` itself."""
    wanted = TRAIN_FILES if train else (TEST_FILE,)
    candidates = [] if root is None else [Path(root).expanduser() / FOLDER, Path(root).expanduser()]
    for folder in candidates:
        if any((folder / f).is_file() for f in wanted):
            return folder
    split = "the train split needs at least one data_batch_N" if train else f"the test split needs {TEST_FILE}"
    raise dataset_not_found(
        f"CIFAR-10 ({'train' if train else 'test'} split)",
        root,
        candidates,
        f"torchvision's python layout <dir>/{FOLDER}/"
        f"{{data_batch_1..data_batch_5, {TEST_FILE}, {META_FILE}}} "
        f"({split}); <dir> may also be the {FOLDER} folder itself",
        "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz yourself, extract it",
    )


@dataclass
class CIFAR10Options(DataOptions):
    name: str = "cifar10"


class CIFAR10Folder(ImageSource):
    """CIFAR-10 (32x32 RGB). Binary label as in the paper's code: animals (classes 2-7) -> 1, else 0."""

    Options = CIFAR10Options
    CLASS_NAMES = CLASS_NAMES

    def _load(self) -> tuple[Tensor, Tensor]:
        folder = find_cifar_dir(self.root, self.train)
        names = [f for f in TRAIN_FILES if (folder / f).is_file()] if self.train else [TEST_FILE]
        if self.train and len(names) < len(TRAIN_FILES):
            log.warning(
                "CIFAR-10 in %s: only %s of the 5 training batches exist",
                folder,
                ", ".join(names),
            )
        data, labels = [], []
        for name in names:
            images, batch_labels = _read_batch(folder / name)
            data.append(images)
            labels.extend(batch_labels)
        if (folder / META_FILE).is_file():
            meta = _read_pickle(folder / META_FILE)
            if b"label_names" not in meta:
                raise dataset_format_error("CIFAR-10", folder / META_FILE, "no label_names", REFETCH)
            self.class_names = [n.decode() for n in meta[b"label_names"]]
        images = torch.from_numpy(np.concatenate(data))
        return images, torch.tensor(labels, dtype=torch.int64)

    def binary_label(self, labels: Tensor) -> Tensor:
        return ((labels >= 2) & (labels <= 7)).long()
