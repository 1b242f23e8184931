"""The shifted-Cholesky rank / null-space routine against a full eigen-decomposition."""

import pytest
import torch

from rgap_bench.linalg.spectrum import (
    cholesky_solve,
    eigen_rank,
    largest_eigenvalue,
    low_spectrum,
    smallest_eigenvalue_rel,
)


def _psd(n: int, rank: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, rank, dtype=torch.float64, generator=gen)
    scales = torch.logspace(0, -3, rank, dtype=torch.float64)  # a spread spectrum, well above the threshold
    return (a * scales) @ a.T


@pytest.mark.parametrize(("n", "rank", "hint"), [(120, 120, 0), (120, 100, 0), (200, 130, 0), (200, 130, 70)])
def test_rank_and_null_space_match_eigh(n, rank, hint):
    gram = _psd(n, rank)
    spec = low_spectrum(gram, 1e-10, null_hint=hint)
    vals, vecs = torch.linalg.eigh(gram)
    assert spec.rank == int((vals > 1e-10 * vals[-1]).sum()) == rank
    null = spec.null_basis
    assert null.shape == (n, n - rank)  # 70 null directions need the block to grow from 16 when there is no hint
    if n > rank:
        assert torch.allclose(null.T @ null, torch.eye(n - rank, dtype=gram.dtype), atol=1e-8)
        assert float((gram @ null).norm()) < 1e-8 * float(vals[-1])
        true_null = vecs[:, : n - rank]  # same subspace: projecting one basis onto the other loses nothing
        assert float((true_null - null @ (null.T @ true_null)).norm()) < 1e-6
        assert spec.sigma_min_rel == 0.0
    else:
        assert spec.sigma_min_rel == pytest.approx(
            float((vals[0] / vals[-1]).sqrt()), rel=1e-2
        )  # lambda_max is estimated


def test_solve_is_the_minimum_norm_solution():
    gram = _psd(150, 110, seed=3)
    rhs = gram @ torch.randn(150, dtype=torch.float64)  # consistent
    spec = low_spectrum(gram, 1e-10)
    x = spec.solve(rhs, gram=gram)
    expected = torch.linalg.pinv(gram, hermitian=True, rtol=1e-10) @ rhs
    assert float((x - expected).norm() / expected.norm()) < 1e-8


def test_cholesky_solve_matches_torch():
    gram = _psd(60, 60, seed=5) + torch.eye(60, dtype=torch.float64)
    chol = torch.linalg.cholesky(gram)
    rhs = torch.randn(60, 3, dtype=torch.float64)
    assert torch.allclose(cholesky_solve(rhs, chol), torch.cholesky_solve(rhs, chol), atol=1e-10)


def test_largest_eigenvalue_from_an_operator_matches_the_matrix():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(300, 120, dtype=torch.float64, generator=gen)
    gram = a.T @ a
    exact = float(torch.linalg.eigvalsh(gram)[-1])
    from_operator = largest_eigenvalue(lambda v: a.T @ (a @ v), 120, like=gram)
    assert from_operator == pytest.approx(largest_eigenvalue(gram), rel=1e-12)
    assert from_operator == pytest.approx(exact, rel=0.05)


def test_plain_cholesky_test_measures_sigma_min_and_refuses_singular_matrices():
    """The rank analysis' full-rank test: sqrt(lambda_min / lambda_max) when the matrix is full rank, else None."""
    full = _psd(120, 120, seed=1)
    vals = torch.linalg.eigvalsh(full)
    assert smallest_eigenvalue_rel(full, 1e-10) == pytest.approx(float((vals[0] / vals[-1]).sqrt()), rel=1e-3)
    assert smallest_eigenvalue_rel(full, float(vals[0] / vals[-1]) * 2) is None  # full rank, but below rcond
    singular = _psd(120, 90, seed=1)
    assert smallest_eigenvalue_rel(singular, 1e-10) is None
    assert eigen_rank(singular, 1e-10)[0] == 90 and eigen_rank(full, 1e-10)[0] == 120
    assert eigen_rank(torch.zeros(5, 5, dtype=torch.float64), 1e-10)[0] == 0
