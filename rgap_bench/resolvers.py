"""Config resolvers the run directories use, registered before Hydra composes a config.

`${unique_suffix:}` is a short random hex string, drawn once per process and cached in the config (Hydra copies the
resolver cache into every job's config, and launchers pickle it along), so all jobs of one sweep agree on their sweep
directory while two sweeps started in the same second, on one machine or on a cluster, never share one.
"""

from __future__ import annotations

import uuid

from omegaconf import OmegaConf

SUFFIX_HEX_DIGITS = 6


def unique_suffix() -> str:
    return uuid.uuid4().hex[:SUFFIX_HEX_DIGITS]


def register_resolvers() -> None:
    """Register `unique_suffix` (idempotent)."""
    if not OmegaConf.has_resolver("unique_suffix"):
        OmegaConf.register_new_resolver("unique_suffix", unique_suffix, use_cache=True)
