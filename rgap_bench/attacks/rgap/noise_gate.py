"""Whether a layer's plain solve saw noise: the noise-aware steps (image prior, rank-one truncation) run only then,
so a clean update keeps its exact closed-form answer bit for bit."""

from __future__ import annotations

# the relative residual above which an update counts as noisy without announcing it: float32 gradients of a clean
# update leave 1.0e-6 on cnn6 photo 0's image layer, relative noise 1e-6 leaves 1.3e-5, 1e-5 leaves 1.3e-4
NOISE_FLOOR = 1e-5


def noisy(residual_rel: float, noise_sigma: float | None) -> bool:
    """The update announces noise, or the plain solve's residual is above what a clean update's float32 gradients
    leave (`NOISE_FLOOR`)."""
    return (noise_sigma or 0.0) > 0 or residual_rel > NOISE_FLOOR
