"""Real RGB photographs bundled inside scikit-image: a small natural-image set that needs no download."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rgap_bench.data.base import DataOptions, ImageSource

# (skimage.data function, is the subject biological). Only images shipped inside the wheel: others
# (eagle, brain, cells3d, ...) are fetched on first use and fail offline. All are public domain or CC0.
PHOTOS: tuple[tuple[str, bool], ...] = (
    ("chelsea", True),
    ("astronaut", True),
    ("coffee", False),
    ("rocket", False),
    ("retina", True),
    ("immunohistochemistry", True),
    ("hubble_deep_field", False),
    ("colorwheel", False),
)

# Square crop boxes as (centre row, centre column, side) fractions; side is relative to the shorter side.
# The first is the central full-height square, so index 0 is the whole cat, clearly recognisable.
CROPS: tuple[tuple[float, float, float], ...] = (
    (0.50, 0.50, 1.00),
    (0.45, 0.50, 0.60),
    (0.30, 0.30, 0.50),
    (0.65, 0.70, 0.50),
    (0.40, 0.60, 0.35),
)


def _crop_box(height: int, width: int, cy: float, cx: float, side: float) -> tuple[int, int, int]:
    """Pixel (top, left, size) of a fractional square box, shifted to lie inside the image."""
    size = max(1, round(side * min(height, width)))
    top = min(max(round(cy * height - size / 2), 0), height - size)
    left = min(max(round(cx * width - size / 2), 0), width - size)
    return top, left, size


@lru_cache(maxsize=8)
def build_photo_crops(image_size: int) -> tuple[Tensor, Tensor]:
    """All crops of all photos, resized to `image_size`, as float (N, 3, S, S) and their photo ids.

    Ordered crop-major (index = crop * n_photos + photo) so that consecutive indices are different
    photos: a batch starting at index 0 holds one central crop of each photo.
    """
    import skimage.data

    photos = [np.asarray(getattr(skimage.data, name)())[..., :3] for name, _ in PHOTOS]
    images = []
    for cy, cx, side in CROPS:
        for photo in photos:
            top, left, size = _crop_box(photo.shape[0], photo.shape[1], cy, cx, side)
            crop = torch.from_numpy(np.ascontiguousarray(photo[top : top + size, left : left + size]))
            crop = crop.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
            if size != image_size:
                crop = F.interpolate(crop, size=(image_size, image_size), mode="bilinear", antialias=True)
            images.append(crop.clamp_(0.0, 1.0))
    labels = torch.arange(len(PHOTOS), dtype=torch.int64).repeat(len(CROPS))
    return torch.cat(images), labels


@dataclass
class PhotosOptions(DataOptions):
    name: str = "photos"


class EmbeddedPhotos(ImageSource):
    """40 square crops (5 boxes x 8 photos) of the photographs bundled with scikit-image.

    Class id = source photo (`class_names`). Binary label: 1 when the photo's subject is biological (a person,
    an animal, human tissue: chelsea, astronaut, retina, immunohistochemistry), 0 otherwise (coffee, rocket,
    hubble_deep_field, colorwheel) -- a 4/4 split standing in for the paper's animal/machine task.
    """

    Options = PhotosOptions
    CLASS_NAMES = tuple(name for name, _ in PHOTOS)
    _living = torch.tensor([living for _, living in PHOTOS], dtype=torch.int64)

    def _load(self) -> tuple[Tensor, Tensor]:
        # Crops are resized here (they differ in size); the base transform then only converts channels.
        return build_photo_crops(self.image_size)

    def binary_label(self, labels: Tensor) -> Tensor:
        return self._living[labels.long()]
