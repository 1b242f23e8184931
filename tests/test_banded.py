"""The block-tridiagonal Cholesky of a conv's weight-row matrix (linalg/banded.py) solves like a sparse direct
solver, for any kernel, stride and padding, and refuses a matrix that is not positive definite."""

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from rgap_bench.linalg.banded import banded_cholesky
from rgap_bench.linalg.constraints import ConvGeometry, weight_row_matrix


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(3, 1, 1), (3, 2, 1), (4, 2, 2), (5, 3, 0), (1, 1, 0)])
def test_banded_solves_match_a_sparse_direct_solve(kernel, stride, padding):
    gen = torch.Generator().manual_seed(kernel * 10 + stride)
    geom = ConvGeometry((3, 11, 9), (kernel, kernel), (stride, stride), (padding, padding))
    rows = weight_row_matrix(torch.randn(5, 3, kernel, kernel, generator=gen, dtype=torch.float64), geom)
    n = rows.shape[1]
    matrix = (rows.T @ rows + 0.3 * sp.identity(n)).tocsr()
    rhs = torch.randn(n, 4, dtype=torch.float64, generator=gen)
    factor = banded_cholesky(matrix, geom.in_shape)
    expected = spla.spsolve(matrix.tocsc(), rhs.numpy())
    assert np.allclose(factor.solve(rhs).numpy(), expected, rtol=1e-9, atol=1e-11)
    assert len(factor.bounds) > 1  # the image really was cut into several blocks


def test_an_indefinite_matrix_is_refused():
    geom = ConvGeometry((2, 6, 6), (3, 3), (1, 1), (1, 1))
    rows = weight_row_matrix(torch.randn(2, 2, 3, 3, dtype=torch.float64), geom)
    matrix = (rows.T @ rows - 1e3 * sp.identity(rows.shape[1])).tocsr()
    assert banded_cholesky(matrix, geom.in_shape) is None
