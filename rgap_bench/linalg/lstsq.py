"""Least squares for stacked constraint blocks: row scaling, normal equations, rank, iterative refinement.

The explicit reference paths of R-GAP (the fast path is `operators.py`). The normal matrix A^T A of a layer is
small (unknowns x unknowns) even when A has many rows, so it is formed sparsely and then factorised: dense
Cholesky (a shifted one also gives the rank and the null space: `spectrum.py`), or sparse LU.
Squaring the condition number costs accuracy; a few refinement steps against the original rows win it back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from rgap_bench.linalg.constraints import ConstraintBlock
from rgap_bench.linalg.spectrum import factor_normal

log = logging.getLogger(__name__)


@dataclass
class SolveResult:
    x: np.ndarray
    solver: str
    rank: int | None
    sigma_min_rel: float | None
    residual_rel: float
    null_basis: np.ndarray | None = None  # orthonormal columns spanning the undetermined directions (dense path)


def stack_scaled(blocks: list[ConstraintBlock], scale_rows: bool) -> tuple[sp.csr_matrix, np.ndarray]:
    """Stack the blocks, drop all-zero rows and (optionally) give every row unit norm.

    Gradient rows carry |k|, which shrinks layer by layer, so unscaled they are orders of magnitude smaller than the
    weight rows and a least-squares solve treats them as noise.
    """
    matrix = sp.vstack([b.matrix for b in blocks], format="csr")
    rhs = np.concatenate([b.rhs for b in blocks])
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    keep = norms > 0
    matrix, rhs, norms = matrix[keep], rhs[keep], norms[keep]
    if scale_rows:
        inv = 1.0 / norms
        matrix = sp.diags(inv) @ matrix
        rhs = rhs * inv
    return matrix.tocsr(), rhs


def _dense_factor(
    normal: np.ndarray,
    dtype: torch.dtype,
    want_rank: bool,
    rcond: float,
    device: torch.device | str = "cpu",
    null_hint: int = 0,
) -> tuple[Callable[[np.ndarray], np.ndarray], int | None, float | None, str, np.ndarray | None]:
    """Factorise the normal matrix on `device` (`spectrum.factor_normal`), with host arrays in and out."""
    gram = torch.from_numpy(normal).to(device=device, dtype=dtype)
    factor = factor_normal(gram, rcond, want_rank, null_hint)

    def solve(r: np.ndarray) -> np.ndarray:
        return factor.solve(torch.from_numpy(r).to(gram)).double().cpu().numpy()

    null = None if factor.null_basis is None else factor.null_basis.double().cpu().numpy()
    return solve, factor.rank, factor.sigma_min_rel, factor.label, null


def _sparse_lu(normal: sp.csc_matrix) -> spla.SuperLU | None:
    """Sparse LU of the normal matrix, or None when it is exactly singular (a rank-deficient layer: LU has no
    minimum-norm solution, the dense factorisation with its rank has)."""
    n = normal.shape[0]
    try:
        return spla.splu(normal.astype(np.float64), permc_spec="COLAMD")
    except MemoryError as exc:
        raise MemoryError(
            f"sparse LU of a {n}x{n} normal matrix ran out of memory (the per-channel gradient blocks K^T K are "
            "dense); use attack.solver=iterative or auto"
        ) from exc
    except RuntimeError:  # scipy: "Factor is exactly singular"
        log.warning("sparse LU: the %dx%d normal matrix is singular; solving it densely, with its rank", n, n)
        return None


def solve_blocks(
    blocks: list[ConstraintBlock],
    *,
    dtype: torch.dtype = torch.float64,
    solver: str = "dense",
    scale_rows: bool = True,
    want_rank: bool = True,
    rcond: float = 1e-10,
    refine_steps: int = 2,
    device: torch.device | str = "cpu",
    null_hint: int = 0,
) -> SolveResult:
    """Least-squares solution of the stacked blocks, with rank and residual of the scaled system."""
    matrix, rhs = stack_scaled(blocks, scale_rows)
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    matrix = matrix.astype(np_dtype)
    rhs = rhs.astype(np_dtype)
    normal = (matrix.T @ matrix).tocsc()
    rank = sigma_min = null_basis = None
    if solver not in ("dense", "sparse"):
        raise ValueError(f"unknown explicit solver {solver!r}; choose dense or sparse")
    lu = _sparse_lu(normal) if solver == "sparse" else None
    if lu is not None:

        def solve(r: np.ndarray) -> np.ndarray:
            return lu.solve(r.astype(np.float64))

        label = "sparse-lu"
    else:
        solve, rank, sigma_min, label, null_basis = _dense_factor(
            normal.toarray(), dtype, want_rank or solver == "sparse", rcond, device, null_hint
        )
    x = solve(np.asarray(matrix.T @ rhs, dtype=np.float64))
    for _ in range(refine_steps):
        residual = rhs - matrix @ x.astype(np_dtype)
        x = x + solve(np.asarray(matrix.T @ residual, dtype=np.float64))
    residual = rhs - matrix @ x.astype(np_dtype)
    denom = float(np.linalg.norm(rhs)) or 1.0
    return SolveResult(x, label, rank, sigma_min, float(np.linalg.norm(residual)) / denom, null_basis)


def dense_lstsq(blocks: list[ConstraintBlock], *, dtype: torch.dtype, scale_rows: bool) -> tuple[np.ndarray, float]:
    """Reference: the stacked system as one dense matrix, solved by LAPACK least squares (what naive code does)."""
    matrix, rhs = stack_scaled(blocks, scale_rows)
    a = torch.from_numpy(matrix.toarray()).to(dtype)
    b = torch.from_numpy(rhs).to(dtype)
    x = torch.linalg.lstsq(a, b[:, None], driver="gelsd").solution[:, 0]
    residual = float((a @ x - b).norm() / b.norm().clamp_min(1e-300))
    return x.double().numpy(), residual
