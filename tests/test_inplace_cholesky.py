"""The in-place shifted Cholesky (one n x n array) against the copying path and the matrix it overwrote."""

import pytest
import torch

from rgap_bench.linalg.inplace_cholesky import InPlaceCholesky
from rgap_bench.linalg.spectrum import factor_normal, low_spectrum


def _psd(n: int, rank: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, rank, dtype=torch.float64, generator=gen)
    gram = (a * torch.logspace(0, -3, rank, dtype=torch.float64)) @ a.T
    return ((gram + gram.T) / 2).to(dtype)  # exactly symmetric: the restored matrix is rebuilt from one triangle


@pytest.mark.parametrize(("n", "rank", "hint"), [(150, 150, 0), (200, 130, 70)])
def test_in_place_spectrum_matches_the_copying_one(n, rank, hint):
    gram = _psd(n, rank)
    copy = low_spectrum(gram, 1e-10, null_hint=hint)
    work = gram.clone()
    in_place = low_spectrum(work, 1e-10, null_hint=hint, overwrite=True)
    assert in_place.rank == copy.rank == rank
    assert not torch.equal(work, gram)  # the factor took the matrix's place
    if n > rank:  # the same null space: each basis projects onto the other without loss
        a, b = in_place.null_basis, copy.null_basis
        assert float((a - b @ (b.T @ a)).norm()) < 1e-6
    rhs = gram @ torch.randn(n, dtype=torch.float64)
    assert torch.allclose(in_place.solve(rhs), copy.solve(rhs), rtol=1e-6, atol=1e-8 * float(copy.solve(rhs).norm()))


def test_a_failed_factorisation_restores_the_matrix_exactly():
    gram = _psd(90, 60, seed=1)
    gram.diagonal()[:5] -= 1.0  # indefinite: potrf stops part-way through
    original = gram.clone()
    factor = InPlaceCholesky(gram)
    assert not factor.factor(1e-12)
    assert torch.equal(gram, original)
    assert factor.factor(10.0)  # a shift that makes it definite
    factor.restore()
    assert torch.equal(gram, original)


def test_products_with_the_matrix_come_from_the_factor():
    gram = _psd(120, 120, seed=2) + 0.1 * torch.eye(120, dtype=torch.float64)
    original = gram.clone()
    factor = InPlaceCholesky(gram)
    assert factor.factor(1e-3)
    v = torch.randn(120, 4, dtype=torch.float64)
    assert torch.allclose(factor.gram_times(v), original @ v, atol=1e-10 * float(original.norm()))


def test_low_spectrum_retries_a_larger_shift_in_place():
    # an eigenvalue just below -rcond * lambda_max: the first shifted factorisation fails, the next one succeeds
    vecs = torch.linalg.qr(torch.randn(80, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(3))).Q
    vals = torch.logspace(0, -4, 80, dtype=torch.float64)
    vals[-3:] = torch.tensor([0.0, 0.0, -3e-10], dtype=torch.float64)
    gram = (vecs * vals) @ vecs.T
    gram = (gram + gram.T) / 2
    copy = low_spectrum(gram, 1e-10, top=1.0)
    in_place = low_spectrum(gram.clone(), 1e-10, top=1.0, overwrite=True)
    assert in_place.shift == copy.shift > 1e-10
    assert in_place.rank == copy.rank == 77


@pytest.mark.parametrize("want_rank", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_factor_normal_in_place_solves_like_the_copying_path(want_rank, dtype):
    gram = _psd(100, 100, seed=4, dtype=dtype) + 1e-2 * torch.eye(100, dtype=dtype)
    rhs = torch.randn(100, dtype=dtype)
    copy = factor_normal(gram, 1e-10 if dtype == torch.float64 else 1e-5, want_rank)
    in_place = factor_normal(gram.clone(), 1e-10 if dtype == torch.float64 else 1e-5, want_rank, overwrite=True)
    assert (in_place.label, in_place.rank) == (copy.label, copy.rank)
    # the two factorisations round differently (LAPACK reads the other triangle): agreement to the condition
    # number (~1e4) times the precision
    tol = 1e-9 if dtype == torch.float64 else 1e-2
    expected = copy.solve(rhs)
    assert float((in_place.solve(rhs) - expected).norm()) < tol * float(expected.norm())
