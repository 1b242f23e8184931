"""A full-rank proof for a strided conv whose gradient rows leave some pixel phases open and whose weight rows
close them: CNN6's conv2 (12 -> 36, k3 s2 p1, 17x17), where neither the gradient rows (K is 324 x 289 but rank
deficient: its 36 centre-tap rows are all that see the 81 even-even pixels) nor the weight rows (2916 < 3468) alone
prove anything.

A stride-s conv's gradient rows separate by pixel phase: the row of tap t only sees pixels q = s*o + t, so K is
block diagonal over the phases and P = I_C (x) K^T K = P_S + P_R, with R the phases whose block has full column
rank (P_R >= alpha on them) and S the rest. The weight part Q = W^T D W is bounded below on the S pixels by their
symbol (`symbol.symbol_sigma_bounds` restricted to S's polyphase channels: beta = min(D) sigma_S^2) and above by
q = max(D) |W|_2^2 (|W|_2 from the whole symbol when every phase is full, else the sum of the taps' norms). For a
unit x = u + v (u on S, v on R):
x^T (P + Q) x >= alpha |v|^2 + (sqrt(beta) |u| - sqrt(q) |v|)_+^2 >= min(lambda_min(M), alpha beta / (beta + q)),
M = [[beta, -sqrt(beta q)], [-sqrt(beta q), alpha + q]]. Every input is a computed bound with its rounding margin.
"""

from __future__ import annotations

import math

import torch

from rgap_bench.linalg.symbol import phase_channels, symbol_norm_bound, symbol_sigma_bounds

MAX_PHASE_PIXELS = 2048  # a determined phase block's eigenvalues beyond this many pixels cost more than they save


def _pixel_phases(size: int, stride: int, padding: int) -> torch.Tensor:
    return (torch.arange(size) + padding) % stride


def phase_split_bound(system) -> float | None:
    """A lower bound on lambda_min / lambda_max of `system`'s (a ConvSystem) normal matrix, or None (pooled, dead
    rows, no open phase or no closing symbol)."""
    if system.z is None or system.pool != 1 or (system.alive is not None and not bool(system.alive.all())):
        return None
    c, h, w = system.geom.in_shape
    (kh, kw), (sh, sw), (ph, pw) = system.geom.kernel, system.geom.stride, system.geom.padding
    kmat = system.channel_matrix()
    filters = kmat.shape[0] // (kh * kw)
    eps = torch.finfo(kmat.dtype).eps
    rows_h, rows_w = torch.arange(kh) % sh, torch.arange(kw) % sw  # a tap's phase
    row_phase = (rows_h[:, None] * sw + rows_w[None, :]).reshape(-1).repeat(filters)
    col_phase = (_pixel_phases(h, sh, ph)[:, None] * sw + _pixel_phases(w, sw, pw)[None, :]).reshape(-1)
    alpha, top_p, open_phases = math.inf, 0.0, []
    for phase in range(sh * sw):
        block = kmat[row_phase.to(kmat.device) == phase][:, col_phase.to(kmat.device) == phase]
        if block.shape[1] == 0:
            continue
        if block.shape[0] < block.shape[1]:  # a wide block leaves its phase open; |block|_F^2 bounds its top
            top_p, low = max(top_p, float((block**2).sum())), 0.0
        elif block.shape[1] > MAX_PHASE_PIXELS:
            return None
        else:
            eig = torch.linalg.eigvalsh(block.T @ block)  # the eigensolver's backward error taken off (added on)
            slack = block.shape[1] * eps * float(eig[-1])
            top_p, low = max(top_p, float(eig[-1]) + slack), float(eig[0]) - slack
        if low > 0:
            alpha = min(alpha, low)
        else:
            open_phases.append(divmod(phase, sw))
    if not open_phases or math.isinf(alpha):
        return None
    bounds = symbol_sigma_bounds(system.weight, system.geom, phase_channels(c, (sh, sw), open_phases))
    d2 = system.weight_scale**2
    if bounds is None or float(d2.min()) <= 0:
        return None
    beta = float(d2.min()) * bounds[0] ** 2
    norm = symbol_norm_bound(system.weight, system.geom)  # |W|_2, or the sum of the taps' norms
    norm = norm if norm is not None else float(torch.linalg.matrix_norm(system.weight.permute(2, 3, 0, 1), ord=2).sum())
    q = float(d2.max()) * norm**2 * (1 + 1e-12)
    trace = beta + alpha + q  # lambda_min of M, in the cancellation-free form 2 det / (tr + sqrt(tr^2 - 4 det))
    low = min(2 * alpha * beta / (trace + math.sqrt(max(trace**2 - 4 * alpha * beta, 0.0))), alpha * beta / (beta + q))
    top = min(top_p + q, c * float((kmat**2).sum()) + float(system.weight_diagonal().sum()))
    return low / top if top > 0 and low > 0 else None
