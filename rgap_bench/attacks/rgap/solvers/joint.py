"""A conv layer below a rank-deficient one, solved together with the deficient layer's free coefficients.

The mathematics is in `rgap_bench.attacks.rgap.null_space`; this strategy adapts it to the recursion. The joint
system is always solved in float64 (also with attack.dtype=float32), since its pattern iteration compares
residuals far below float32's resolution; the results are cast back to the solve dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rgap_bench.attacks.rgap.layers import RGAPLayer
from rgap_bench.attacks.rgap.null_space import solve_through_null_space
from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.attacks.rgap.solvers.base import LayerSolve


def solve_joint(
    layer: RGAPLayer,
    back_k: Tensor,
    x_upper: Tensor,
    null_basis: Tensor,
    options: RGAPOptions,
    dtype: torch.dtype,
) -> LayerSolve:
    """`layer`'s input and the corrected input of the deficient layer above (x_upper = x_min + N a), from the
    error `back_k` back-propagated through that layer and its minimum-norm input x_min."""
    joint = solve_through_null_space(
        layer.op.weight,
        layer.grad,
        layer.geometry,
        layer.act,
        back_k,
        x_upper,
        null_basis,
        tol=options.tol,
        max_pcg_iter=options.max_iter,
        scale_rows=options.scale_rows,
        bias=layer.op.bias,
        pool=layer.pool,
        rcond=options.rcond,
    )
    device = layer.grad.device
    settled = "settled" if joint.consistent else "not settled"
    if joint.rank is not None:
        settled += f", joint rank {joint.rank} of {joint.unknowns}"
    return LayerSolve(
        joint.x_lower.to(device, dtype).reshape(layer.in_shape),
        joint.residual_rel,
        "joint-null-space",
        iterations=joint.iterations,
        x_upper=joint.x_upper.to(device, dtype).reshape(layer.out_shape),
        pattern_settled=joint.consistent,
        joint_rank=joint.rank,
        joint_unknowns=joint.unknowns,
        rank_method=joint.rank_method,
        note=(
            f"solved with the {null_basis.shape[1]} undetermined directions of layer {layer.index + 1}; "
            f"activation pattern {settled}"
        ),
    )
