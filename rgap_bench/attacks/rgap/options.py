"""R-GAP's options: the single home of their defaults (the Hydra schema `attack=rgap` subclasses this)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rgap_bench.errors import ConfigError
from rgap_bench.linalg.regularize import RULES

SOLVERS = ("auto", "iterative", "dense", "sparse", "lstsq")


@dataclass
class RGAPOptions:
    name: str = "rgap"
    # float64 | float32: the layer-by-layer solves; the output scalar and the joint null-space solve stay float64
    dtype: str = "float64"
    solver: str = "auto"  # auto | iterative | dense | sparse | lstsq (the last is the naive reference)
    rank: str = "auto"  # auto | exact | off: numerical rank of each layer's system
    # auto: dense exact rank up to this many unknowns; any size when the gradient rows alone prove full rank
    rank_max_unknowns: int = 6000
    # auto: also up to this many when the counting bound predicts a null space; the dense path holds one n x n
    # matrix, factorised in place (8 n^2 bytes in float64: 2.0 GB at 16000), and falls back to PCG when it would not
    # fit in free memory; from plan.WOODBURY_MIN_UNKNOWNS (8192) on, a conv on the host takes its symbol's null space
    # (solvers/symbol_null.py) or Woodbury over its banded weight rows (solvers/woodbury.py) instead
    null_max_unknowns: int = 16000
    refine_steps: int = 2  # iterative-refinement steps after the normal-equation solve
    scale_rows: bool = True  # normalise each constraint row (every solve, the joint one too); else gradient rows drown
    rcond: float = 1e-10  # relative eigenvalue cut-off for rank-deficient normal equations
    tol: float = 1e-11  # iterative solver: relative residual of the normal equations
    max_iter: int = 3000  # iterative solver: iteration cap per layer
    carry_null_space: bool = True  # solve the layer below a rank-deficient one jointly with its null space
    # composed | null_space (rank=auto): a conv whose counting bound predicts a null space is solved through the
    # conv below, its weight rows composed with that conv in one sparse system (composed.py), or on its own first,
    # densely, for the null space the conv below then takes on (null_space.py; rank=exact always does this)
    joint: str = "composed"
    # refit the LeakyReLU derivatives whose sign noise leaves in doubt, then re-solve (a clean update has none)
    refit_pattern: bool = True
    # conv layers: keep the refit round whose solve fits the weight rows best (else the last round; docs/noise.md)
    refit_best: bool = True
    # conv layers whose pattern had signs in doubt: down-weight the gradient rows of a filter whose residual is an
    # outlier (> 2x the median filter's: a wrong slope left in its k), reweighted iteratively (pattern.py, noise.md)
    robust_filters: bool = True
    # none | gcv | discrepancy | auto: Tikhonov on each layer's least squares with lam from the data (docs/noise.md);
    # auto is the discrepancy principle when the noise std is known, else generalised cross-validation
    regularize: str = "none"
    # none | smooth: the image layer (layer 0, a conv) solved under a smoothness prior on the image, its weight
    # lam by generalised cross-validation (lam = 0 when the plain solve fits; docs/noise.md)
    image_prior: str = "smooth"
    image_prior_lam: float | None = None  # a fixed lam / mean diagonal of the normal matrix instead of GCV's
    prior_layers: int = 1  # the prior on the inputs of the bottom this many layers (convs only; 1: the image)
    # a noisy one-sample update: each linear layer's input takes its direction from the top singular vector of its
    # rank-one gradient k x^T and its length from the k-weighted gradient rows (linalg/rank_one.py; docs/noise.md)
    rank_one: bool = True
    # a fully connected net (piecewise-linear activations) whose image layer got the rank-one fit: the image is then
    # refined against every layer's fit at once, each weighted by ||k_l||^2 (Gauss-Newton; linalg/chain_refine.py)
    chain_refine: bool = True
    # the gradient noise's std the attacker assumes; null: the one the update's metadata announces (if any)
    noise_sigma: float | None = None
    # ReLU: a reconstructed output within this fraction of the layer's largest |output| is a dead unit (its weight
    # row is dropped); exact solves leave 1e-10..1e-7 there in float64, up to ~1e-6 in float32, noise far more
    relu_dead_tol: float = 1e-5
    # off | auto: on a noisy update whose layers are all uniquely solved, polish the closed-form answer by float64
    # gradient matching (L-BFGS, polish_iterations evaluations) and keep it if it matches the update better (polish.py).
    # Off by default: R-GAP stays a closed-form attack, and the polish's gain ends abruptly where matching stops
    # converging (fcn3: 94 dB at relative noise 1e-3, 55 dB at 1e-2), a steeper curve than the closed form's
    polish: str = "off"
    polish_iterations: int = 300

    def __post_init__(self) -> None:
        if self.dtype not in ("float64", "float32"):
            raise ConfigError(f"attack.dtype must be float64 or float32, got {self.dtype!r}")
        if self.rank not in ("auto", "exact", "off"):
            raise ConfigError(f"attack.rank must be auto, exact or off, got {self.rank!r}")
        if self.regularize not in RULES:
            raise ConfigError(f"attack.regularize must be one of {', '.join(RULES)}, got {self.regularize!r}")
        if self.image_prior not in ("none", "smooth"):
            raise ConfigError(f"attack.image_prior must be none or smooth, got {self.image_prior!r}")
        if self.image_prior_lam is not None and not (math.isfinite(self.image_prior_lam) and self.image_prior_lam >= 0):
            raise ConfigError(
                f"attack.image_prior_lam must be a finite number >= 0 or null, got {self.image_prior_lam}"
            )
        if self.prior_layers < 0:
            raise ConfigError(f"attack.prior_layers must be >= 0 (0: no layer gets the prior), got {self.prior_layers}")
        if self.noise_sigma is not None and not (math.isfinite(self.noise_sigma) and self.noise_sigma >= 0):
            raise ConfigError(f"attack.noise_sigma must be a finite number >= 0 or null, got {self.noise_sigma}")
        if self.polish not in ("auto", "off"):
            raise ConfigError(f"attack.polish must be auto or off, got {self.polish!r}")
        if self.polish_iterations < 1:
            raise ConfigError(f"attack.polish_iterations must be >= 1, got {self.polish_iterations}")
        if self.joint not in ("composed", "null_space"):
            raise ConfigError(f"attack.joint must be composed or null_space, got {self.joint!r}")
        if self.solver not in SOLVERS:
            raise ConfigError(f"attack.solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
