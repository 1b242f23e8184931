"""Numerical rank of one layer's stacked, row-scaled R-GAP system at the model's current weights.

Exact where affordable, with structure first: the gradient rows of a conv are one small matrix G_c per input
channel, so rank([G; W]) = C_in * rank(G_c) + rank(W restricted to null(G_c) in every channel). That turns the
3468-unknown CNN6-d conv2 system into a 1500-column one, and shows CNN6's conv3-conv6 full rank from G_c alone.
The eigenvalue routines themselves are `rgap_bench.linalg.spectrum`'s; this module only builds the systems.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from rgap_bench.linalg.constraints import ConvGeometry, conv_constraints, conv_patch_index
from rgap_bench.linalg.pooling import pooled_filters, pooled_geometry, upsample_error
from rgap_bench.linalg.spectrum import eigen_rank, largest_eigenvalue, smallest_eigenvalue_rel


@dataclass
class RankResult:
    rank: int | None
    sigma_min_rel: float | None  # smallest / largest singular value of the row-scaled system; 0 when deficient
    method: str
    time_s: float = 0.0


def _eig_rank(gram: np.ndarray, rcond: float) -> tuple[int, np.ndarray]:
    rank, vals = eigen_rank(torch.from_numpy(gram), rcond)
    return rank, vals.numpy()


def rank_of_normal(normal: np.ndarray, rcond: float) -> RankResult:
    """Dense exact rank of a normal matrix: Cholesky when it is clearly full rank, else eigvalsh."""
    start = time.perf_counter()
    start = torch.from_numpy(np.random.default_rng(0).standard_normal(normal.shape[0]))  # rank.json's seed
    sigma = smallest_eigenvalue_rel(torch.from_numpy(normal), rcond, start=start)
    if sigma is not None:
        return RankResult(normal.shape[0], sigma, "exact (cholesky)", time.perf_counter() - start)
    rank, vals = _eig_rank(normal, rcond)
    sigma = float(np.sqrt(max(vals[0], 0.0) / vals[-1])) if rank == normal.shape[0] else 0.0
    return RankResult(rank, sigma, "exact (eigvalsh)", time.perf_counter() - start)


def _channel_gradient(weight: Tensor, k: Tensor, geom: ConvGeometry) -> np.ndarray:
    """G_c: the gradient rows of one input channel (identical for every channel), rows scaled, zero rows dropped."""
    _, h, w = geom.in_shape
    one = ConvGeometry((1, h, w), geom.kernel, geom.stride, geom.padding)
    dummy = torch.zeros(weight.shape[0], 1, *geom.kernel, dtype=torch.float64)
    gc = conv_constraints(dummy, torch.zeros(dummy.numel()), k, None, one)[0].matrix.toarray()
    norms = np.linalg.norm(gc, axis=1)
    return gc[norms > 0] / norms[norms > 0, None]


def _weight_rows(weight: Tensor, geom: ConvGeometry, keep: np.ndarray | None) -> sp.csr_matrix:
    """Row-scaled W (one row per output unit, interior columns), by index arithmetic like R-GAP's."""
    idx = conv_patch_index(geom).numpy()  # (C*kh*kw, L)
    taps, positions = idx.shape
    filters = weight.shape[0]
    rows = np.broadcast_to(np.arange(filters)[:, None, None] * positions + np.arange(positions)[None, None, :],
                           (filters, taps, positions))  # fmt: skip
    vals = np.broadcast_to(weight.reshape(filters, taps).numpy()[:, :, None], rows.shape)
    cols = np.broadcast_to(idx[None], rows.shape)
    inside = cols >= 0
    n = int(np.prod(geom.in_shape))
    wmat = sp.csr_matrix((vals[inside], (rows[inside], cols[inside])), shape=(filters * positions, n))
    if keep is not None:
        wmat = wmat[keep]
    norms = np.sqrt(np.asarray(wmat.multiply(wmat).sum(axis=1)).ravel())
    wmat = wmat[norms > 0]
    return (sp.diags(1.0 / norms[norms > 0]) @ wmat).tocsr()


def conv_rank(
    weight: Tensor,
    k: Tensor,
    geom: ConvGeometry,
    weight_rows: np.ndarray | None,
    *,
    dense_max: int,
    rcond: float,
    pool: int = 1,
) -> RankResult:
    """Rank of the row-scaled [gradient rows; weight rows] of a conv. `weight_rows` masks outputs whose z is known.

    The scaled gradient rows are blockdiag(G_c, ..., G_c), so the normal matrix is I (x) G_c^T G_c + W^T W and the
    (large) gradient block is never built. `pool` > 1: `k` is the pooled error (F, pooled positions); the gradient
    rows use P^T k, the weight rows the equivalent pooled conv (`rgap_bench.linalg.pooling`).
    """
    start = time.perf_counter()
    row_weight, row_geom = weight, geom
    if pool > 1:
        row_geom = pooled_geometry(geom, pool)
        k = upsample_error(k.reshape(weight.shape[0], *row_geom.out_hw), geom.out_hw, pool).reshape(weight.shape[0], -1)
        row_weight = pooled_filters(weight, geom.stride, pool)
    channels = geom.in_shape[0]
    n = int(np.prod(geom.in_shape))
    gc = _channel_gradient(weight, k, geom)
    pixels = gc.shape[1]
    small = gc @ gc.T if gc.shape[0] <= gc.shape[1] else gc.T @ gc
    g_rank, g_vals = _eig_rank(small, rcond)
    nullity = channels * (pixels - g_rank)
    if n > dense_max and g_rank == pixels:
        return RankResult(n, None, "exact (per-channel gradient rank)", time.perf_counter() - start)
    if n > dense_max and (nullity > dense_max or pixels > 3 * dense_max):
        return RankResult(None, None, "", time.perf_counter() - start)
    wmat = _weight_rows(row_weight, row_geom, weight_rows)
    if n <= dense_max and (g_rank == pixels or nullity >= n // 2):
        normal = (wmat.T @ wmat).toarray()
        gram = gc.T @ gc
        for c in range(channels):
            normal[c * pixels : (c + 1) * pixels, c * pixels : (c + 1) * pixels] += gram
        result = rank_of_normal(normal, rcond)
        if result.rank == n or nullity >= n // 2:
            if g_rank == pixels:
                result.method = "exact (per-channel gradient rank + cholesky)"
            result.time_s = time.perf_counter() - start
            return result
    # Reduce to the gradient null space: rank = C_in * rank(G_c) + rank(W N), N = blockdiag(null(G_c)).
    basis = np.linalg.svd(gc, full_matrices=True)[2][g_rank:].T  # (pixels, pixels - g_rank)
    reduced = np.hstack([wmat[:, c * pixels : (c + 1) * pixels] @ basis for c in range(channels)])
    # The threshold is the whole system's (lambda_max of the gradient rows), not the reduced block's own: when the
    # weight rows lie in the gradient rows' span (a pooled conv, whose rows all share the pooling's factor) the
    # reduced block is rounding noise, and relative to its own largest eigenvalue that noise would count as rank.
    w_vals = np.linalg.eigvalsh(reduced.T @ reduced) if reduced.size else np.zeros(0)
    top = float(g_vals[-1]) if g_vals.size and g_vals[-1] > 0 else float(w_vals[-1]) if w_vals.size else 0.0
    w_rank = int((w_vals > rcond * top).sum()) if top > 0 else 0
    rank = channels * g_rank + w_rank
    method = "exact (gradient null-space reduction)"
    return RankResult(rank, 0.0 if rank < n else None, method, time.perf_counter() - start)


def linear_rank(weight: Tensor, k: Tensor, weight_rows: np.ndarray | None, *, rcond: float) -> RankResult:
    """Rows k_j x^T: rank n as soon as one k_j != 0; else the weight rows alone (their rank, by SVD)."""
    start = time.perf_counter()
    n = weight.shape[1]
    active = int((k.reshape(-1) != 0).sum())
    w = weight.double()
    if weight_rows is not None:
        w = w[torch.from_numpy(weight_rows)]
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-300)
    if active:
        # Scaled gradient rows are +-e_i, `active` copies each: normal = active * I + W_s^T W_s.
        top = largest_eigenvalue(lambda v: w.T @ (w @ v), w.shape[1], like=w, steps=30, block=1) if w.numel() else 0.0
        sigma = float(np.sqrt(active / (active + top)))
        return RankResult(n, sigma, "exact (gradient rows k_j x^T)", time.perf_counter() - start)
    sv = torch.linalg.svdvals(w) if w.numel() else torch.zeros(0)
    rank = int((sv > rcond * sv[0]).sum()) if sv.numel() and sv[0] > 0 else 0
    return RankResult(
        rank, 0.0 if rank < n else float(sv[-1] / sv[0]), "exact (svd, k = 0)", time.perf_counter() - start
    )
