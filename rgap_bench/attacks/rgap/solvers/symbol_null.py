"""A large rank-deficient conv that is full in polyphase form (CNN6's conv2 at 64x64) by its symbol's null space.

`rgap_bench.linalg.symbol_null` parametrises every input that meets the weight rows exactly: x = E^T (u0 + T theta),
T an orthonormal basis of the polyphase grids the block-circulant conv sends to zero (3468 columns at 13068
unknowns). The remaining equations, the unreached grid positions and the gradient rows, form M theta = r; the
Gram matrix M^T M is factorised densely with a shift, and block inverse iteration with that factor (as on the dense
path, `spectrum.low_spectrum`) finds its null space, which T carries onto the layer's own, exactly. On a clean update
the solution is exact in every direction the layer determines; under noise it fits the weight rows exactly and the
rest in least squares (a different weighting than the dense path's). Convs that are not full in polyphase form go
to `solvers.woodbury`.
"""

from __future__ import annotations

import torch
from scipy.linalg.blas import dsyrk
from torch import Tensor

from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.plan import LayerPlan
from rgap_bench.attacks.rgap.solvers.base import LayerProblem, LayerSolve
from rgap_bench.attacks.rgap.solvers.woodbury import solve_woodbury
from rgap_bench.linalg.spectrum import largest_eigenvalue, low_spectrum
from rgap_bench.linalg.symbol_null import symbol_null_basis


def solve_symbol_null(problem: LayerProblem, plan: LayerPlan, options: RGAPOptions) -> LayerSolve:
    layer, system = problem.layer, problem.system
    basis = symbol_null_basis(system.row_weight, system.row_geom) if system.z is not None else None
    if basis is None:
        return solve_woodbury(problem, plan, options)
    c, h, w = system.shape
    n = c * h * w
    like = {"device": system.weight.device, "dtype": system.weight.dtype}
    kmat = system.channel_matrix().cpu().double()  # (F kh kw, H W), rows scaled

    def grad_rows(x: Tensor) -> Tensor:  # (n, k) pixels -> (C F kh kw, k) scaled gradient rows
        return (kmat @ x.reshape(c, h * w, -1)).reshape(c * kmat.shape[0], -1)

    rows = torch.cat([basis.unreached_rows(), basis.gradient_rows(system.k_full, system.grad_scale)])
    gram = torch.from_numpy(dsyrk(1.0, rows.numpy().T, trans=0))  # M^T M, upper triangle (half a product's work)
    gram.add_(gram.T.tril(-1))
    # lambda_max to a few percent (4 power steps on the 96 MB matrix instead of 8); the next eigenvalue above the null
    # space is damped 1e-4-fold per step at CNN6's conv2 (1.1e-6 of lambda_max against the 1e-10 shift): 2 steps
    top = largest_eigenvalue(gram, steps=4)
    spectrum = low_spectrum(gram, options.rcond, null_hint=plan.null_hint, iterations=2, top=top)
    free = spectrum.null_basis  # (size, d): theta directions no equation reaches
    u0_pixels, u0_unreached = basis.particular(system.z)
    grad = (system.grad * system.grad_scale).detach().cpu().double().transpose(0, 1).reshape(-1)
    rhs = torch.cat([-u0_unreached, grad - grad_rows(u0_pixels[:, None])[:, 0]])
    theta = spectrum.solve(rows.T @ rhs, steps=4, gram=gram)
    coefficients = torch.cat([theta[:, None], free], dim=1)
    out = basis.synthesize(coefficients)
    x = (u0_pixels + out[:, 0]).reshape(system.shape).to(**like)
    rank = n - free.shape[1]
    null = torch.linalg.qr(out[:, 1:]).Q if rank < n else None
    return LayerSolve(
        x.reshape(layer.in_shape),
        system.residual_rel(x),
        "symbol-null-space",
        rank=rank,
        sigma_min_rel=0.0 if rank < n else None,
        null_basis=None if null is None else null.to(**like),
        rank_method="polyphase symbol null space",
        note=f"{basis.size} symbol null directions of the weight rows, {free.shape[1]} left by every other row",
    )
