"""Result files: strict JSON and an originals-vs-reconstructions figure, each written atomically."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

INCH_PER_IMAGE = 1.6
MAX_PER_ROW = 8
_TITLE_KEYS = {"originals", "reconstructions", "figure"}


def to_jsonable(obj: Any) -> Any:
    """Convert to plain JSON types; non-finite floats become None because JSON has no NaN/Infinity.

    Unknown objects become their ``str`` so that a result file is still written after an expensive attack.
    """
    if obj is None or isinstance(obj, bool | str | int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray | np.generic):
        return to_jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype | torch.device):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, Sequence | set | frozenset) and not isinstance(obj, bytes | bytearray):
        return [to_jsonable(v) for v in obj]
    return str(obj)


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path` to write to; it replaces `path` only when the block completes.

    A crash, Ctrl-C or full disk mid-write leaves the previous file (or none), never a truncated one: the temporary
    file is in the same directory, so `os.replace` is an atomic rename, and it is removed when the block fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name no other writer uses (parallel sweeps), created by the writer itself so it gets the usual file mode
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """Write strictly valid JSON (non-finite floats become null), atomically."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False)
    with atomic_write(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object written by a job (metrics.json, job.json, rank.json), or None when the file is missing, cut
    short (a job killed before its atomic rename leaves no file, an older writer may have) or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _as_image(x: Tensor) -> tuple[np.ndarray, str | None]:
    x = x.detach().to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0)
    if x.shape[0] == 1:
        return x[0].numpy(), "gray"
    if x.shape[0] == 3:
        return x.permute(1, 2, 0).numpy(), None
    raise ValueError(f"can only show 1- or 3-channel images, got {x.shape[0]} channels")


@dataclasses.dataclass
class ImageRow:
    """One labelled row of a figure: images (N, C, H, W) in [0, 1] and an optional caption above each."""

    label: str
    images: Tensor
    captions: list[str] | None = None


def save_image_rows(rows: list[ImageRow], path: Path, heading: str | None = None) -> None:
    """Save a PNG with one labelled row per `ImageRow` (clamped to [0, 1]), wrapping after 8 images: the first 8
    columns of every row, then the next 8, and so on. Uses the Agg canvas directly rather than pyplot, so it needs
    no display and leaves the global backend alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    for row in rows:
        if row.captions is not None and len(row.captions) != row.images.shape[0]:
            raise ValueError(f"row {row.label!r}: {len(row.captions)} captions for {row.images.shape[0]} images")
    n = max(row.images.shape[0] for row in rows)
    ncols = min(n, MAX_PER_ROW)
    nchunks = math.ceil(n / MAX_PER_ROW)
    nrows = len(rows) * nchunks
    top_in = 0.35 if heading else 0.0
    fig = Figure(figsize=(ncols * INCH_PER_IMAGE, nrows * INCH_PER_IMAGE + top_in), dpi=100)
    FigureCanvasAgg(fig)
    if heading:
        fig.suptitle(str(heading), fontsize=8)
    grid = fig.add_gridspec(
        nrows,
        ncols,
        left=0.02 if ncols > 1 else 0.1,
        right=0.98,
        bottom=0.01,
        top=1.0 - (top_in + 0.2) / (nrows * INCH_PER_IMAGE + top_in),
        wspace=0.05,
        hspace=0.25,
    )
    for i in range(n):
        chunk, col = divmod(i, MAX_PER_ROW)
        for kind, row in enumerate(rows):
            if i >= row.images.shape[0]:
                continue
            ax = fig.add_subplot(grid[len(rows) * chunk + kind, col])
            image, cmap = _as_image(row.images[i])
            ax.imshow(image, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col == 0:
                ax.set_ylabel(row.label, fontsize=8)
            if row.captions is not None:
                ax.set_title(row.captions[i], fontsize=8)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")


def save_comparison(
    originals: Tensor,
    reconstructions: Tensor,
    path: Path,
    *,
    titles: dict | None = None,
    per_image_psnr: list[float] | None = None,
) -> None:
    """Save a PNG: originals on top, (clamped) reconstructions below (with their PSNR), wrapping after 8 images.

    ``titles`` may set ``originals`` and ``reconstructions`` (row labels) and ``figure`` (a heading).
    """
    titles = dict(titles or {})
    unknown = set(titles) - _TITLE_KEYS
    if unknown:
        raise ValueError(f"unknown title keys {sorted(unknown)}; expected some of {sorted(_TITLE_KEYS)}")
    if per_image_psnr is not None and len(per_image_psnr) != reconstructions.shape[0]:
        raise ValueError(f"{len(per_image_psnr)} PSNR values for {reconstructions.shape[0]} reconstructions")
    captions = None if per_image_psnr is None else [f"{p:.1f} dB" for p in per_image_psnr]
    rows = [
        ImageRow(str(titles.get("originals", "original")), originals),
        ImageRow(str(titles.get("reconstructions", "reconstruction")), reconstructions, captions),
    ]
    save_image_rows(rows, path, titles.get("figure"))
