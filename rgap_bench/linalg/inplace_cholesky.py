"""A shifted Cholesky factorisation that overwrites its (host) matrix: one n x n array at the peak instead of three.

The dense rank path used to hold the normal matrix G, its shifted copy G + s I and the factor at once: 24 n^2 bytes
in float64, 4.1 GB for CNN6's conv2 at 64x64 (13068 unknowns). LAPACK's potrf factorises in place and touches only
one triangle, so the other triangle (and a saved diagonal) still hold G: a failed factorisation (rounding made
G + s I indefinite) is undone from it and retried with a larger shift, and products with G come from the factor,
G v = L (L^T v) - s v (rounding: a few ulps of lambda_max, far below any rank threshold).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg.blas
import scipy.linalg.lapack
import torch
from torch import Tensor

RESTORE_BLOCK = 1024  # rows copied back per step when undoing a factorisation (bounds the temporary)


class InPlaceCholesky:
    """The lower Cholesky factor of `gram` + shift I, written over `gram` (a C-contiguous symmetric host tensor).

    Seen as a Fortran array the tensor is the same symmetric matrix; potrf writes L into that view's lower
    triangle (the tensor's upper one) and leaves the rest, so `chol` (the transposed view) reads as L wherever a
    triangular routine looks."""

    def __init__(self, gram: Tensor) -> None:
        if gram.device.type != "cpu" or not gram.is_contiguous():
            raise ValueError("InPlaceCholesky needs a contiguous host tensor; use torch.linalg.cholesky elsewhere")
        self.gram = gram
        self.diagonal = gram.diagonal().clone()
        self.shift: float | None = None  # the shift of the factor now held (None: the matrix is G itself)
        self.fortran = gram.numpy().T  # the same memory, column-major

    @property
    def chol(self) -> Tensor:
        """L as a (column-major) view of the overwritten matrix: only its lower triangle is meaningful."""
        return self.gram.T

    def factor(self, shift: float) -> bool:
        """Factorise G + shift I in place; on failure G is restored and False returned."""
        self.restore()
        self.gram.diagonal().add_(shift)
        (potrf,) = scipy.linalg.lapack.get_lapack_funcs(("potrf",), (self.fortran,))
        out, info = potrf(self.fortran, lower=1, clean=0, overwrite_a=1)
        if not np.shares_memory(out, self.fortran):  # f2py copied after all: nothing was written in place
            raise RuntimeError("LAPACK potrf did not factorise in place; the matrix layout is not column-major")
        self.shift = shift
        if info != 0:
            self.restore()
            return False
        return True

    def restore(self) -> None:
        """Undo a factorisation: copy the untouched triangle (the tensor's strict lower one) back over the other."""
        if self.shift is None:
            return
        gram, n = self.gram, self.gram.shape[0]
        for i0 in range(0, n, RESTORE_BLOCK):
            i1 = min(n, i0 + RESTORE_BLOCK)
            block = gram[i0:i1, i0:i1]
            lower = torch.tril(block, -1)
            block.copy_(lower + lower.T)
            gram[i0:i1, i1:] = gram[i1:, i0:i1].T
        gram.diagonal().copy_(self.diagonal)
        self.shift = None

    def gram_times(self, v: Tensor) -> Tensor:
        """G v from the factor of G + s I (two triangular products)."""
        if self.shift is None:
            return self.gram @ v
        b = np.asfortranarray(v.numpy())
        (trmm,) = scipy.linalg.blas.get_blas_funcs(("trmm",), (self.fortran, b))
        lt_v = trmm(1.0, self.fortran, b, lower=1, trans_a=1)
        out = torch.from_numpy(np.ascontiguousarray(trmm(1.0, self.fortran, lt_v, lower=1)))
        return out - self.shift * v
