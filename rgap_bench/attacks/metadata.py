"""Checks of an update's public metadata that every attack shares.

The metadata is not a gradient, so no gradient check sees it: a batch size of 0 or a label outside the loss's label
space would surface as an IndexError or a shape error deep inside the loss (matching attacks), or silently as a wrong
sign of the output logit (R-GAP reads y = 2t - 1).
"""

from __future__ import annotations

from torch import Tensor

from rgap_bench.errors import InvalidUpdateError
from rgap_bench.types import UpdateMetadata


def check_batch_size(meta: UpdateMetadata) -> None:
    """An update covers at least one sample (the matching attacks size their dummy batch by it)."""
    if meta.batch_size < 1:
        raise InvalidUpdateError(
            f"the update says it averages {meta.batch_size} samples; a client update covers at least one "
            "(data.batch_size >= 1)"
        )


def shared_labels(meta: UpdateMetadata, classes: int) -> Tensor | None:
    """The shared labels as int64 (B,), or None when none were shared; `classes` is the size of the label space
    (2 for the binary logistic loss)."""
    if meta.labels is None:
        return None
    labels = meta.labels.reshape(-1)
    if labels.numel() != meta.batch_size:
        raise InvalidUpdateError(
            f"the update shares {labels.numel()} labels for a batch of {meta.batch_size}; share one label per sample "
            "or none (client.share_labels=false)"
        )
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise InvalidUpdateError(
            f"shared labels must be integer class ids, got {labels.tolist()}; share the labels the client trained on"
        )
    if bool(((labels < 0) | (labels >= classes)).any()):
        raise InvalidUpdateError(
            f"shared labels {labels.long().tolist()} are outside the label space 0..{classes - 1} of the "
            f"{meta.loss.name} loss; the labels were encoded for another loss or model"
        )
    return labels.long()
