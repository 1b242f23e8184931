"""What the machine can give a solve: free memory for a dense factorisation, CPU threads for many tiny kernels.

Kept apart from the solvers so that a solver's arithmetic reads the same on every machine; only the choice between
solvers (R-GAP's plan) and the thread count of a solve depend on these probes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

SMALL_LAYER_WORK = 2e7  # unknowns x taps per filter below which one CPU thread is fastest for PCG
# n x n matrices alive at the dense path's peak: on the host the normal matrix, factorised in place
# (`rgap_bench.linalg.inplace_cholesky`); on a GPU the matrix, its shifted copy and the factor
DENSE_MATRICES = {"cpu": 1, "cuda": 3}


@dataclass(frozen=True)
class DenseMemory:
    """Bytes the dense path holds at its peak and the bytes free on its device (None where unknown)."""

    need: float
    free: float | None

    def fits(self, share: float = 0.8) -> bool:
        """True unless the probe knows that `need` exceeds `share` of the free memory."""
        return self.free is None or self.need <= share * self.free


def dense_bytes(n: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """Peak bytes of a dense factorisation of an n x n normal matrix (`DENSE_MATRICES` of them at once)."""
    matrices = DENSE_MATRICES.get(torch.device(device).type, 3)
    return matrices * float(n) * n * torch.empty((), dtype=dtype).element_size()


def free_bytes(device: torch.device) -> float | None:
    """Free memory on `device`: CUDA's own count, else the host's MemAvailable (None where it cannot be read)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return float(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def dense_memory(n: int, dtype: torch.dtype, device: torch.device) -> DenseMemory:
    """What a dense factorisation of n unknowns needs against what `device` has free."""
    return DenseMemory(dense_bytes(n, dtype, device), free_bytes(device))


def solve_threads(device: torch.device, work: float) -> int | None:
    """Thread cap for an iterative solve of `work` (unknowns x taps per filter): one CPU thread for small layers,
    whose many tiny kernels only gain synchronisation from more; None (torch's own count) otherwise."""
    return 1 if device.type == "cpu" and work < SMALL_LAYER_WORK else None


@contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Temporarily cap torch's CPU threads: PCG on small layers runs many tiny kernels, where extra threads only
    add synchronisation (and collapse when another process holds a core)."""
    previous = torch.get_num_threads()
    if count is not None and count < previous:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def last_level_cache_bytes(default: float = 8 * 2**20) -> float:
    """The CPU's largest cache (Linux sysfs), or `default` where it cannot be read."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
            sizes.append(float(text[:-1]) * {"K": 2**10, "M": 2**20, "G": 2**30}[text[-1]])
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return max(sizes, default=default)


def batch_bytes(device: torch.device) -> float | None:
    """How many bytes of stacked operators one batched solve may hold: on a CPU a third of the last-level cache,
    since past it every PCG iteration streams them from memory and the samples run slower together than one by one
    (CNN6 32x32's conv2, 4.7 MB a sample on a 32 MB cache: 50 ms a sample two at a time, 73 ms four at a time, 53
    alone); None on a GPU, where a larger batch only fills more of the device."""
    return None if device.type != "cpu" else last_level_cache_bytes() / 3
