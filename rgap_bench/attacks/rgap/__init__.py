"""R-GAP: recursive closed-form reconstruction of a single input from its gradient (Zhu & Blaschko, ICLR 2021).

Top-down over the blocks: the output layer's scalar gives mu and k_d = dL/dz_d, its gradient row gives x_d; then
for each block below, z_i = sigma^-1(x_{i+1}), k_i = (W_{i+1}^T k_{i+1}) * sigma'(z_i), and the layer input solves
[gradient rows; weight rows] x_i = [dL/dW_i; z_i] in the least-squares sense.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rgap_bench.attacks.logistic_scalar import F_MIN, U_STAR, invert_logistic_scalar
from rgap_bench.attacks.null_space import solve_through_null_space
from rgap_bench.attacks.rgap.options import RGAPOptions
from rgap_bench.errors import InvalidUpdateError, UnsupportedModelError
from rgap_bench.linalg.activations import PiecewiseLinear, invertible_activation
from rgap_bench.linalg.constraints import ConvGeometry, conv_constraints, linear_constraints
from rgap_bench.linalg.lstsq import dense_lstsq, solve_blocks
from rgap_bench.linalg.operators import BlockJacobi, ConvSystem, LinearSystem, pcg
from rgap_bench.linalg.precision import conv_tf32
from rgap_bench.linalg.resources import cpu_threads
from rgap_bench.linalg.spectrum import factor_normal, largest_eigenvalue
from rgap_bench.models.layers import SequentialNet
from rgap_bench.options import build_options
from rgap_bench.rank.counts import conv_counts
from rgap_bench.types import ClientUpdate, LayerReport, Reconstruction

log = logging.getLogger(__name__)

SMALL_LAYER_WORK = 2e7  # unknowns x taps per filter below which one CPU thread is fastest
SUPPORTED_LAYERS = "bias-free nn.Conv2d (groups=1, dilation=1, zero padding) and nn.Linear"


@dataclass(frozen=True)
class _Layer:
    """What the recursion needs of one block, read off the model once and checked."""

    index: int
    name: str
    op: nn.Conv2d | nn.Linear
    act: PiecewiseLinear
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    grad: Tensor


def _geometry(layer: _Layer) -> ConvGeometry | None:
    """Index geometry of a conv layer's input (None for a linear layer)."""
    op = layer.op
    if not isinstance(op, nn.Conv2d):
        return None
    return ConvGeometry(tuple(layer.in_shape), tuple(op.kernel_size), tuple(op.stride), tuple(op.padding))


def _predicted_deficiency(layer: _Layer) -> int:
    """The counting bound's deficiency (rgap_bench.rank.counts): sizes the null-space search of the dense path."""
    op = layer.op
    if not isinstance(op, nn.Conv2d):
        return 0
    counts = conv_counts(tuple(layer.in_shape), op.out_channels, op.kernel_size, op.stride, op.padding)
    return max(counts.predicted_deficiency, 0)


def _dense_memory(n: int, dtype: torch.dtype, device: torch.device) -> tuple[float, float | None]:
    """Bytes the dense path holds at its peak (the normal matrix, its shifted copy, the factor) and the bytes free on
    the device (None where unknown)."""
    need = 3.0 * n * n * torch.empty((), dtype=dtype).element_size()
    if device.type == "cuda":
        return need, float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return need, float(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return need, None


def _operator_top(system: ConvSystem) -> float:
    """lambda_max of the layer's normal matrix by block power iteration on the matrix-free operator: each step is
    a few convolutions instead of a full read of the dense matrix (1.4 GB at 13068 unknowns)."""
    shape = system.shape

    def apply(v: Tensor) -> Tensor:
        return torch.stack([system.normal(col.reshape(shape)).reshape(-1) for col in v.T], dim=1)

    return largest_eigenvalue(apply, math.prod(shape), like=system.weight)


def _logged(report: LayerReport) -> LayerReport:
    """One progress line per solved layer (large inputs take minutes; the log says where the attack is)."""
    iterations = f", {report.iterations} iterations" if report.iterations else ""
    residual = f", residual {report.residual_rel:.1e}" if report.residual_rel is not None else ""
    log.info("layer %d (%s): %s%s%s, %.2f s", report.index, report.layer, report.solver, iterations, residual,
             report.time_s)  # fmt: skip
    return report


def choose_candidate(candidates: list[Reconstruction], tolerance: float = 10.0) -> Reconstruction:
    """Pick among (label, root) hypotheses: the most consistent, then the one inside the image range.

    A bias-free LeakyReLU network is positively homogeneous, so when the output scalar has two roots both yield
    exactly consistent reconstructions that differ by a scale; only the public prior that inputs are images in
    [0, 1] tells them apart.
    """
    floor = min(rec.residual_rel for rec in candidates)
    consistent = [rec for rec in candidates if rec.residual_rel <= tolerance * floor + 1e-9]
    return min(consistent, key=lambda rec: rec.range_violation)


def describe_op(op: nn.Conv2d | nn.Linear) -> str:
    """Short, readable layer label such as 'conv 3>12 k4 s2 p2' or 'linear 3200>1'."""
    if isinstance(op, nn.Linear):
        return f"linear {op.in_features}>{op.out_features}"
    kernel = "x".join(map(str, op.kernel_size)) if op.kernel_size[0] != op.kernel_size[1] else op.kernel_size[0]
    return f"conv {op.in_channels}>{op.out_channels} k{kernel} s{op.stride[0]} p{op.padding[0]}"


class RGAP:
    """The attack plugin (`attack=rgap`)."""

    update_kinds = ("gradient",)

    def __init__(self, options: RGAPOptions | None = None, /, **overrides: Any) -> None:
        self.options = build_options(RGAPOptions, options, overrides)
        opts = self.options
        self.name = opts.name
        self.dtype = torch.float64 if opts.dtype == "float64" else torch.float32
        self.solver = opts.solver
        self.rank = opts.rank
        self.rank_max_unknowns = opts.rank_max_unknowns
        self.null_max_unknowns = opts.null_max_unknowns
        self.refine_steps = opts.refine_steps
        self.scale_rows = opts.scale_rows
        self.rcond = opts.rcond
        self.tol = opts.tol
        self.max_iter = opts.max_iter
        self.carry_null_space = opts.carry_null_space

    def __call__(self, model: nn.Module, update: ClientUpdate) -> Reconstruction:
        with conv_tf32(False):  # every solve goes through convolutions: float32 must stay IEEE float32 on a GPU
            return self._attack(model, update)

    def _attack(self, model: nn.Module, update: ClientUpdate) -> Reconstruction:
        meta = update.metadata
        if meta.kind != "gradient":
            raise UnsupportedModelError(f"R-GAP inverts gradients (FedSGD); got an update of kind {meta.kind!r}")
        if meta.loss != "binary_logistic":
            raise UnsupportedModelError(
                f"R-GAP's output-layer step is derived for the binary logistic loss; got {meta.loss!r}"
            )
        if meta.batch_size != 1:
            raise UnsupportedModelError(
                f"R-GAP recovers one sample; this update averages {meta.batch_size}. Use data.batch_size=1, or a "
                "gradient-matching attack for batches"
            )
        layers = self._read_layers(model, update)
        grad_out = layers[-1].grad.reshape(-1)
        w_out = layers[-1].op.weight.detach().reshape(-1).to(grad_out.device, torch.float64)
        c = float(w_out @ grad_out.double())
        scale = meta.batch_size if meta.reduction == "mean" else 1
        clamped = math.isfinite(c) and c * scale < F_MIN
        if clamped:
            # Noise (a defence) can push the scalar below anything a clean logistic gradient produces; the closest
            # consistent value is f's minimum. Attack on, and say so, rather than refuse the update.
            log.warning(
                "<w, dL/dw> = %.4g is below the logistic minimum %.4f: using u = %.4f", c * scale, F_MIN, U_STAR
            )
        roots = [U_STAR] if clamped else invert_logistic_scalar(c * scale)
        labels = [int(meta.labels.reshape(-1)[0])] if meta.labels is not None else [0, 1]
        candidates = []
        for label in labels:
            for u in roots:
                candidates.append(self._recurse(layers, label, u, scale))
        best = choose_candidate(candidates)
        best.info["output_scalar"] = c * scale
        best.info["output_scalar_clamped"] = clamped
        if len(candidates) > 1:
            best.info["candidates"] = [
                {key: r.info[key] for key in ("label", "u", "mean_residual_rel", "range_violation")} for r in candidates
            ]
        return best

    def _read_layers(self, model: nn.Module, update: ClientUpdate) -> list[_Layer]:
        if not isinstance(model, SequentialNet):
            raise UnsupportedModelError(
                f"R-GAP walks a stack of conv/linear blocks (rgap_bench.models.SequentialNet); got "
                f"{model.__class__.__name__}"
            )
        shapes = [*model.block_input_shapes, None]
        layers = []
        for i, block in enumerate(model.blocks):
            where = f"layer {i} ({block.op.__class__.__name__})"
            op = block.op
            if not isinstance(op, nn.Conv2d | nn.Linear):
                raise UnsupportedModelError(f"{where} is not supported; R-GAP supports {SUPPORTED_LAYERS}")
            if op.bias is not None:
                raise UnsupportedModelError(
                    f"{where} has a bias; R-GAP as published needs bias-free layers. Set bias: false"
                )
            if isinstance(op, nn.Conv2d) and (
                op.groups != 1
                or tuple(op.dilation) != (1, 1)
                or op.padding_mode != "zeros"
                or isinstance(op.padding, str)
            ):
                raise UnsupportedModelError(f"{where}: R-GAP supports {SUPPORTED_LAYERS}")
            key = f"blocks.{i}.op.weight"
            if key not in update.tensors:
                raise InvalidUpdateError(f"the update has no tensor {key!r}; it was made for another model")
            grad = update.tensors[key].detach().to(op.weight.device, self.dtype)
            if grad.shape != op.weight.shape:
                raise InvalidUpdateError(f"{key}: update shape {tuple(grad.shape)} != weight {tuple(op.weight.shape)}")
            if not torch.isfinite(grad).all():
                raise InvalidUpdateError(
                    f"{key} contains NaN or Inf: the client's gradient diverged or a defence broke it; "
                    "check the client loss and the defence parameters"
                )
            out_shape = tuple(shapes[i + 1]) if shapes[i + 1] is not None else (op.weight.shape[0],)
            layers.append(_Layer(i, key, op, invertible_activation(block.act, where), shapes[i], out_shape, grad))
        head = layers[-1].op
        if not isinstance(head, nn.Linear) or head.out_features != 1:
            raise UnsupportedModelError(
                "R-GAP's output step needs a single-logit nn.Linear head (binary logistic loss); "
                f"the last layer is {head}"
            )
        return layers

    def _recurse(self, layers: list[_Layer], label: int, u: float, scale: int) -> Reconstruction:
        y = 2 * label - 1
        mu = u / y
        head = layers[-1]
        z = head.act.inverse(torch.tensor([mu], dtype=self.dtype, device=head.grad.device))
        dl_dmu = -y / (1.0 + math.exp(u)) / scale
        k = dl_dmu * head.act.derivative(z)
        reports: list[LayerReport] = []
        x_next: Tensor | None = None
        null_basis = None
        for layer in reversed(layers):
            if x_next is not None:
                back_k = self._back_propagate(layers[layer.index + 1], k)
                if null_basis is not None:
                    x_next, k, report = self._solve_jointly(layer, back_k, x_next, null_basis, reports[-1])
                    null_basis = None
                    reports.append(_logged(report))
                    continue
                z = layer.act.inverse(x_next.reshape(layer.out_shape))
                k = back_k * layer.act.derivative(z)
            x_next, report, null_basis = self._solve_layer(layer, k, z)
            if not self.carry_null_space or layer.index == 0 or not isinstance(layers[layer.index - 1].op, nn.Conv2d):
                null_basis = None  # the joint solve needs a conv below (a linear layer is never deficient anyway)
            reports.append(_logged(report))
        reports.reverse()
        residuals = [r.residual_rel for r in reports if r.residual_rel is not None]
        image = x_next.reshape(1, *layers[0].in_shape).float().cpu()
        residual = float(np.mean(residuals))
        violation = float((image - image.clamp(0, 1)).abs().mean())
        return Reconstruction(
            inputs=image,
            labels=torch.tensor([label]),
            layers=reports,
            residual_rel=residual,
            range_violation=violation,
            info={
                "label": label,
                "u": float(u),
                "mu": float(mu),
                "mean_residual_rel": residual,
                "range_violation": violation,
            },
        )

    def _back_propagate(self, upper: _Layer, k_upper: Tensor) -> Tensor:
        """dL/d(input of the upper layer) = W^T k, reshaped to the lower layer's output shape."""
        weight = upper.op.weight.detach().to(self.dtype)
        if isinstance(upper.op, nn.Linear):
            return (weight.T @ k_upper.reshape(-1)).reshape(upper.in_shape)
        grad_in = torch.nn.grad.conv2d_input(
            (1, *upper.in_shape),
            weight,
            k_upper.reshape(1, *k_upper.shape[-3:]),
            upper.op.stride,
            upper.op.padding,
        )
        return grad_in[0]

    def _solve_layer(
        self, layer: _Layer, k: Tensor, z: Tensor
    ) -> tuple[Tensor, LayerReport, Tensor | np.ndarray | None]:
        start = time.perf_counter()
        weight = layer.op.weight.detach().to(self.dtype)
        n = int(np.prod(layer.in_shape))
        is_conv = isinstance(layer.op, nn.Conv2d)
        geom = _geometry(layer)
        # A linear layer's gradient rows alone pin x down (rank n) as soon as one k[j] != 0: no need to measure.
        determined_by_gradient = not is_conv and bool(torch.any(k != 0))
        want_rank = self.rank == "exact" or (
            self.rank == "auto"
            and not determined_by_gradient
            and (n <= self.rank_max_unknowns or self._null_expected(layer, n))
        )
        system = None
        if is_conv:
            system = ConvSystem(weight, k.reshape(weight.shape[0], *geom.out_hw), layer.grad, z, geom, self.scale_rows)
        certificate = self._full_rank_certificate(system)
        if certificate is not None:
            want_rank = False  # proven full rank (at any size): no dense factorisation needed
        method = self._method(is_conv, want_rank)
        if method == "dense" and is_conv and self.rank == "auto" and self.solver == "auto":
            need, free = _dense_memory(n, self.dtype, weight.device)
            if free is not None and need > 0.8 * free:
                log.warning(
                    "layer %d: the dense normal matrix (%d unknowns) needs ~%.1f GB, %.1f GB are free; solving "
                    "it iteratively without its rank or null space (lower attack.null_max_unknowns to silence this)",
                    layer.index, n, need / 1e9, free / 1e9,
                )  # fmt: skip
                want_rank, method = False, "pcg"
        iterations = None
        rank = n if determined_by_gradient or certificate is not None else None
        sigma_min = null_basis = None
        if method == "direct-linear":
            x, residual = LinearSystem(weight, k, layer.grad, z, self.scale_rows).solve()
            label = method
        elif method == "pcg":
            small = weight.device.type == "cpu" and n * weight[0].numel() < SMALL_LAYER_WORK
            with cpu_threads(1 if small else None):
                result = pcg(
                    system.normal, system.normal_rhs(), BlockJacobi(system), tol=self.tol, max_iter=self.max_iter
                )
            x, iterations, residual = result.x, result.iterations, system.residual_rel(result.x)
            label = "pcg-blockjacobi"
            if result.normal_residual_rel > 1e3 * self.tol:
                log.warning(
                    "layer %d: PCG stopped at relative normal residual %.1e after %d iterations (attack.max_iter); "
                    "the layer may be rank-deficient (check with python -m rgap_bench.rank). To measure its rank and "
                    "solve its null space jointly with the layer below, use attack.rank=auto with "
                    "attack.rank_max_unknowns >= %d (a dense %d x %d normal matrix: %.1f GB)",
                    layer.index,
                    result.normal_residual_rel,
                    iterations,
                    n,
                    n,
                    n,
                    8 * n * n / 1e9,
                )
        elif method == "dense" and is_conv:
            hint = _predicted_deficiency(layer) if want_rank else 0
            # no refinement against the dense matrix itself: the steps below refine against the operator, and
            # each product with an n x n matrix is a full read of it (1.4 GB at n = 13068)
            top = _operator_top(system) if want_rank else None
            factor = factor_normal(system.dense_normal(), self.rcond, want_rank, hint, refine_steps=0, top=top)
            rhs = system.normal_rhs()
            x = factor.solve(rhs.reshape(-1)).reshape(geom.in_shape)
            for _ in range(self.refine_steps):  # against the operator, so the normal matrix's rounding washes out
                x = x + factor.solve((rhs - system.normal(x)).reshape(-1)).reshape(geom.in_shape)
            rank, sigma_min, label, null_basis = factor.rank, factor.sigma_min_rel, factor.label, factor.null_basis
            residual = system.residual_rel(x)
        else:
            x, residual, rank, sigma_min, label, null_basis = self._solve_explicit(
                layer, weight, k, z, geom, method, want_rank
            )
        report = LayerReport(
            index=layer.index,
            layer=describe_op(layer.op),
            unknowns=n,
            unknowns_padded=geom.padded_unknowns if is_conv else n,
            gradient_constraints=layer.grad.numel(),
            weight_constraints=int(z.numel()),
            padding_constraints=(geom.padded_unknowns - n) if is_conv else 0,
            rank=rank,
            rank_deficiency=None if rank is None else n - rank,
            sigma_min_rel=sigma_min,
            residual_rel=residual,
            solver=label,
            iterations=iterations,
            time_s=time.perf_counter() - start,
        )
        if certificate is not None:
            report.rank_method = "gradient-row bound"
            report.note = (
                f"full rank, proven by the gradient rows alone (sigma_min/sigma_max >= {certificate**0.5:.1e})"
            )
        if report.rank_deficiency:
            report.note = f"rank-deficient: {report.rank_deficiency} input directions are not determined"
            log.info("layer %d: %s", layer.index, report.note)
        return x.reshape(layer.in_shape), report, null_basis

    def _solve_jointly(
        self, layer: _Layer, back_k: Tensor, x_upper: Tensor, null_basis: Tensor | np.ndarray, upper_report: LayerReport
    ) -> tuple[Tensor, Tensor, LayerReport]:
        """Solve this layer together with the null-space coefficients of the deficient layer above it."""
        start = time.perf_counter()
        op = layer.op
        geom = _geometry(layer)
        joint = solve_through_null_space(
            op.weight,
            layer.grad,
            geom,
            layer.act,
            back_k,
            x_upper,
            null_basis,
            tol=self.tol,
            max_pcg_iter=self.max_iter,
        )
        device = layer.grad.device
        x_upper_new = joint.x_upper.to(device, self.dtype).reshape(layer.out_shape)
        k = back_k * layer.act.derivative(layer.act.inverse(x_upper_new))
        n = int(np.prod(layer.in_shape))
        upper_report.note += f"; completed jointly with layer {layer.index} below"
        report = LayerReport(
            index=layer.index,
            layer=describe_op(op),
            unknowns=n,
            unknowns_padded=geom.padded_unknowns if geom is not None else n,
            gradient_constraints=layer.grad.numel(),
            weight_constraints=int(np.prod(layer.out_shape)),
            padding_constraints=(geom.padded_unknowns - n) if geom is not None else 0,
            residual_rel=joint.residual_rel,
            solver="joint-null-space",
            iterations=joint.iterations,
            pattern_settled=joint.consistent,
            time_s=time.perf_counter() - start,
            note=(
                f"solved with the {null_basis.shape[1]} undetermined directions of layer {layer.index + 1}; "
                f"activation pattern {'settled' if joint.consistent else 'not settled'}"
            ),
        )
        return joint.x_lower.to(device, self.dtype).reshape(layer.in_shape), k, report

    def _full_rank_certificate(self, system: ConvSystem | None) -> float | None:
        """rank=auto: the gradient rows' lower bound on sigma_min^2 / sigma_max^2 when it proves full rank at
        attack.rcond (the dense path's threshold), else None."""
        if system is None or self.rank != "auto":
            return None
        bound = system.full_rank_bound()
        return bound if bound is not None and bound > self.rcond else None

    def _null_expected(self, layer: _Layer, n: int) -> bool:
        """A larger layer goes dense too when the counting bound predicts a null space that the layer below can
        absorb: only the dense path finds the null space to carry down."""
        if not self.carry_null_space or layer.index == 0 or n > self.null_max_unknowns:
            return False
        return _predicted_deficiency(layer) > 0

    def _method(self, is_conv: bool, want_rank: bool) -> str:
        """auto: closed form for linear layers, PCG for convs, the explicit dense path when a rank is wanted."""
        if self.solver == "auto":
            if not is_conv:
                return "direct-linear"
            return "dense" if want_rank else "pcg"
        if self.solver == "iterative":
            return "pcg" if is_conv else "direct-linear"
        return self.solver

    def _solve_explicit(
        self, layer: _Layer, weight: Tensor, k: Tensor, z: Tensor, geom: ConvGeometry | None, method: str, rank: bool
    ) -> tuple[Tensor, float, int | None, float | None, str, np.ndarray | None]:
        """Explicit sparse matrices (host, float64 assembly): the reference paths and the exact rank."""
        cpu = {"device": "cpu", "dtype": torch.float64}
        w64, g64, k64, z64 = (t.detach().to(**cpu) for t in (weight, layer.grad, k, z))
        if geom is not None:
            blocks = conv_constraints(w64, g64, k64.reshape(weight.shape[0], -1), z64, geom)
        else:
            blocks = linear_constraints(w64, g64, k64, z64)
        if method == "lstsq":
            x, residual = dense_lstsq(blocks, dtype=self.dtype, scale_rows=self.scale_rows)
            return torch.from_numpy(x).to(weight.device, self.dtype), residual, None, None, "dense-lstsq", None
        result = solve_blocks(
            blocks,
            dtype=self.dtype,
            solver=method,
            scale_rows=self.scale_rows,
            want_rank=rank,
            rcond=self.rcond,
            refine_steps=self.refine_steps,
            device=weight.device,
            null_hint=_predicted_deficiency(layer) if rank else 0,
        )
        x = torch.from_numpy(result.x).to(weight.device, self.dtype)
        return x, result.residual_rel, result.rank, result.sigma_min_rel, result.solver, result.null_basis
