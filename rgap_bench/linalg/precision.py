"""Float32 convolutions that are float32: cuDNN runs them in TF32 (10 mantissa bits) by default on Ampere and later
GPUs, which is fine for training and ruinous for an attack that solves linear systems through convolutions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def conv_tf32(enabled: bool) -> Iterator[None]:
    """cuDNN TF32 for float32 convolutions on or off inside the block, restored afterwards. torch >= 2.9 has a
    per-backend `fp32_precision`; mixing it with the legacy `allow_tf32` flag raises, so the new API is used where
    it exists. Harmless on a CPU (only a flag is set)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        previous = conv.fp32_precision
        conv.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = previous
    else:
        previous = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = enabled
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = previous


def conv_precision() -> str:
    """cuDNN's float32 convolution mode in words, for logs and benchmark headers."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        return f"cudnn.conv.fp32_precision={conv.fp32_precision}"
    return f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"


# compact storage: float32 only where sqrt(n) eps32 cond(B) stays below this (the rounding then moves the
# preconditioner by well under this fraction in every direction; CNN6 32x32's conv1-6 are at 0.006 or less)
COMPACT_ROUNDING = 0.1


def compact_dtype(dtype: torch.dtype, n: int, cond_bound: float) -> torch.dtype:
    """float32 for a float64 preconditioner of n x n SPD blocks B whose condition number is at most `cond_bound`,
    when applying it in float32 barely changes it (a typical rounding error of sqrt(n) eps32 cond(B), relative);
    else `dtype`. Only a preconditioner: PCG's residual stays in `dtype`, so its solution does not change."""
    if dtype != torch.float64:
        return dtype
    small = n**0.5 * torch.finfo(torch.float32).eps * cond_bound <= COMPACT_ROUNDING
    return torch.float32 if small else dtype
