"""Exact sparse probability mappings over the last dimension, as compact autograd Functions.

This file depends on torch alone: it is copied verbatim into every saved model folder as part of the
remote code, so that ``trust_remote_code=True`` reproduces our attention without hf_sparse_attn or entmax.

Every mapping takes scores ``z`` of shape ``[..., d]`` and returns probabilities on the simplex along the last
dimension. Entries equal to ``-inf`` (masked keys) get exactly zero, provided the row has one finite entry;
callers deal with rows that have none (see ``sparse_attn_modeling.masked_mapping``).

- ``sparsemax(z)``           Martins & Astudillo 2016.
- ``entmax15(z)``            Peters et al. 2019, alpha = 1.5.
- ``entmax_newton(z, a)``    alpha-entmax for any alpha in (1, 2] (a float or a tensor broadcastable to
                             ``z[..., :1]``); differentiable in alpha.
- ``sparsegen_lin(z, lam)``  Laha et al. 2018, sparsemax(z / (1 - lam)), lam < 1.

How the threshold is found (all three mappings share one solver). alpha-entmax is
``p = [x - tau]_+^n`` with ``x = (alpha - 1) z`` and ``n = 1 / (alpha - 1)``, and ``tau`` is the root of
``N(tau) = ||[x - tau]_+||_n = 1``. N is convex and decreasing in tau, so Newton's method started left of the root
(``tau = max(x) - 1``, where the largest entry alone has mass 1) climbs monotonically to it without overshooting.
Working on the n-norm rather than on the mass ``N^n`` makes N nearly linear in tau: for sparsemax (n = 1) each
step is Michelot's exact update and stops once the support stops shrinking, for entmax15 a row of equal
scores is solved in one step, and real attention rows take 4-8 steps. Each step is a handful of elementwise
passes and two row sums over ``[..., d]``, no sort; rows that have converged are dropped from later steps.
A bracket ``[lo, hi]`` guards every step (a proposal outside it is replaced by the midpoint), so rounding can
never push the iteration off. The result is exact to rounding, like the sort-based closed forms.

Backward passes keep only the output ``p`` (what softmax keeps) and rebuild everything else from it. They avoid
``sqrt``/``log``/``pow`` of exact zeros, which run an order of magnitude slower than on positive numbers on CPU.
Float16/bfloat16 inputs are computed in float32 and returned in their own dtype.
"""

from __future__ import annotations

import torch

_HALF_DTYPES = (torch.float16, torch.bfloat16)

# Newton converges quadratically once the support is found; real rows need 4-8 steps. The cap only matters for
# adversarial inputs, where the bracket keeps the answer valid (and the final renormalisation keeps it on the simplex).
_MAX_NEWTON_STEPS = 64
# Drop converged rows from the working set once fewer than this share of them are still moving.
_COMPACT_BELOW = 0.5
# alpha-entmax works on the raw scores while 1 / (alpha - 1) stays below this (alpha >= 1.0625): the largest
# r^(n - 1) is then n^(n - 1) <= 16^15, far from overflow even in float32. Beyond, it solves on (alpha - 1) z.
_MAX_UNSCALED_N = 16.0


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _HALF_DTYPES else dtype


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """``[..., d]`` as contiguous ``[rows, d]`` (a view when the layout allows): the solver's scratch buffers are
    made with ``empty_like`` and viewed row by row, which needs the standard layout."""
    return t.reshape(-1, t.shape[-1]).contiguous()


def _first_rows(buffer: torch.Tensor, rows: int) -> torch.Tensor:
    """The first ``rows`` rows of a preallocated ``[R, d]`` buffer: fresh large allocations page-fault on CPU."""
    return buffer.view(-1)[: rows * buffer.shape[-1]].view(rows, buffer.shape[-1])


def _newton_bracket(z: torch.Tensor, n, scale):
    """The threshold's starting bracket ``lo <= t <= hi`` ([R, 1] each) and the stopping tolerances for ``t`` and the
    mass, shared by the eager and the traced solver so that both stop under the same test."""
    d = z.shape[-1]
    eps = torch.finfo(z.dtype).eps
    z_max = z.amax(dim=-1, keepdim=True)
    inv_scale = 1 / scale
    # Bracket: the largest entry alone has mass 1 at t = max - 1/scale; at t = max - d^(-1/n)/scale every entry has
    # mass at most 1/d. (Masked entries leave fewer than d finite ones, which only moves the root left.)
    lo = z_max - inv_scale
    hi = z_max - (torch.pow(float(d), -1.0 / n) if torch.is_tensor(n) else float(d) ** (-1.0 / n)) * inv_scale
    # Steps below these are rounding noise: one ulp of the scores' scale for t, a few ulps for the mass.
    t_tol = eps * torch.maximum(z_max.abs(), torch.as_tensor(inv_scale, dtype=z.dtype, device=z.device))
    return lo, hi, t_tol, 8 * eps


def _newton_update(t, lo, hi, s_nm1, s_n, norm, t_tol, mass_tol):
    """One bracketed Newton step of both solvers, from the mass terms at ``t`` (see :func:`_mass_terms_in_place`).

    Newton on N(t) = scale * s_n^(1/n): t += (N - 1) / -N'(t), with N' = -scale * s_nm1 * s_n^(1/n - 1). Returns
    the new threshold, the narrowed bracket and which rows are still moving: a row is done when its step, its mass
    error or its bracket is at rounding level (NaN rows, with no finite entry, compare False and stop at once). A
    step that would leave the bracket is replaced by bisection; a converged row keeps its last (rounding-level)
    step, which may sit on the bracket's edge.
    """
    step = (1 - 1 / norm) * s_n / s_nm1
    left_of_root = norm >= 1
    lo = torch.where(left_of_root, t, lo)
    hi = torch.where(left_of_root, hi, t)
    moving = (step.abs() > t_tol) & ((norm - 1).abs() > mass_tol) & (hi - lo > t_tol)
    proposal = t + step
    outside = (proposal <= lo) | (proposal >= hi)
    proposal = torch.where(moving & outside, (lo + hi) / 2, proposal)
    return torch.where(torch.isfinite(proposal), proposal, t), lo, hi, moving


def _mass_terms_in_place(kind: str, r: torch.Tensor, w_buffer, w_exponent, n, scale, zero_power_is_one: bool):
    """``(s_nm1, s_n, norm, w)`` of the working rows ``r = [z - t]_+``: s_nm1 = sum r^(n-1) (-dN/dt up to a
    factor), s_n = sum r^n (the mass up to scale^n), norm = N(t), and for the ``pow`` kind ``w`` = r^n in
    ``w_buffer`` (a row's output once it stops; None for the closed kinds).

    Fused reductions or in-place work only: every fresh [R, d] tensor costs page faults. The sparsemax kind
    overwrites ``r`` (rebuilt next step anyway). ``zero_power_is_one``: some row has n == 1 (alpha == 2), whose
    0 ** 0 == 1 off the support must be zeroed with sign().
    """
    if kind == "sparsemax":
        s_n = r.sum(dim=-1, keepdim=True)
        return r.sign_().sum(dim=-1, keepdim=True), s_n, s_n * scale, None  # sign sum: the support size
    if kind == "entmax15":
        l2 = torch.linalg.vector_norm(r, 2, dim=-1, keepdim=True)
        return r.sum(dim=-1, keepdim=True), l2 * l2, l2 * scale, None
    w = torch.pow(r, w_exponent, out=_first_rows(w_buffer, r.shape[0]))
    if zero_power_is_one:
        w.mul_(torch.sign(r))
    s_nm1 = w.sum(dim=-1, keepdim=True)
    s_n = w.mul_(r).sum(dim=-1, keepdim=True)
    return s_nm1, s_n, torch.pow(s_n, 1.0 / n) * scale, w


def _entmax_rows(z: torch.Tensor, n, scale) -> torch.Tensor:
    """alpha-entmax of each row of ``z`` ``[R, d]``: ``p = [scale * (z - t)]_+^n`` normalised.

    ``n`` = 1 / (alpha - 1) and ``scale`` (alpha - 1, or 1.0 for scores already multiplied by it) are floats or
    ``[R, 1]`` tensors (one per row). The threshold ``t`` (in the units of ``z``) solves
    ``N(t) = scale * ||[z - t]_+||_n = 1``; see the module docstring. Returns a new ``[R, d]`` tensor; rows with no
    finite entry come back NaN (callers mask them).
    """
    rows, d = z.shape
    per_row = torch.is_tensor(n)
    lo, hi, t_tol, mass_tol = _newton_bracket(z, n, scale)
    if per_row:
        w_exponent = n - 1
        zero_power_is_one = bool((w_exponent == 0).any())
        kind = "pow"
    else:
        w_exponent = float(n) - 1.0
        zero_power_is_one = False
        kind = {0.0: "sparsemax", 1.0: "entmax15"}.get(w_exponent, "pow")

    r_buffer = torch.empty_like(z)  # [z - t]_+ of the working rows
    # pow kind: r^(n - 1), then r^n of the working rows. A row's r^n at its last step is its output: rows write it
    # to `out` as they leave, so no final pow pass is needed. Until the first compaction the working set is every
    # row in order, so `out` is this very buffer; after it the (at most half as many) working rows take their
    # r^n scratch from the free tail of r_buffer.
    w_buffer = torch.empty_like(z) if kind == "pow" else None
    out = None
    active = torch.arange(rows, device=z.device)  # rows still in the working set, as indices into all rows
    every_t = None  # [R, 1] thresholds of every row, made once rows start leaving the working set
    z_act, t_act, lo_act, hi_act, tol_act = z, lo, lo, hi, t_tol
    n_act, wexp_act, scale_act = n, w_exponent, scale
    for _ in range(_MAX_NEWTON_STEPS):
        r = _first_rows(r_buffer, z_act.shape[0])
        torch.sub(z_act, t_act, out=r)
        r.clamp_min_(0)  # -inf - t = -inf -> 0
        s_nm1, s_n, norm, w = _mass_terms_in_place(kind, r, w_buffer, wexp_act, n_act, scale_act, zero_power_is_one)
        t_act, lo_act, hi_act, moving = _newton_update(t_act, lo_act, hi_act, s_nm1, s_n, norm, tol_act, mass_tol)
        n_moving = int(moving.sum())
        if n_moving == 0:
            break
        if n_moving < _COMPACT_BELOW * moving.shape[0]:
            if every_t is None:
                every_t = t_act  # the working set is still every row here
            else:
                every_t.index_copy_(0, active, t_act)
            if kind == "pow":
                if out is None:
                    out = w_buffer  # every row, in order: the leaving rows' outputs are already in place
                    w_buffer = r_buffer.view(-1)[(rows - n_moving) * d:].view(n_moving, d) if 2 * n_moving <= rows \
                        else torch.empty(n_moving, d, dtype=z.dtype, device=z.device)
                else:
                    leaving = (~moving).view(-1).nonzero().view(-1)
                    out.index_copy_(0, active.index_select(0, leaving), w.index_select(0, leaving))
            keep = moving.view(-1).nonzero().view(-1)
            # index_select: several times faster than advanced indexing for gathering whole rows on CPU
            active, z_act, t_act, lo_act, hi_act, tol_act = (
                v.index_select(0, keep) for v in (active, z_act, t_act, lo_act, hi_act, tol_act))
            if per_row:
                n_act, wexp_act = n_act.index_select(0, keep), wexp_act.index_select(0, keep)
            if torch.is_tensor(scale_act):
                scale_act = scale_act.index_select(0, keep)
    if kind == "pow":  # the rows still in the working set leave with the r^n of their last step
        p = w if out is None else out.index_copy_(0, active, w)
    else:
        t = t_act if every_t is None else every_t.index_copy_(0, active, t_act)
        p = torch.sub(z, t, out=r_buffer)
        p.clamp_min_(0)
        if kind == "entmax15":
            p.mul_(p)
    # Newton stops at rounding level: renormalising puts the row on the simplex to the last bit (and makes the
    # constant scale^n irrelevant).
    return p.div_(p.sum(dim=-1, keepdim=True))


def _tracing() -> bool:
    """Inside torch.compile or torch.export: no data-dependent Python control flow, no data-dependent shapes."""
    return torch.compiler.is_compiling()


def _entmax_rows_traced(z: torch.Tensor, n, scale) -> torch.Tensor:
    """:func:`_entmax_rows` for traced graphs (torch.compile(fullgraph=True), torch.export): the same bracketed
    Newton steps on every row, inside one ``torch.while_loop`` instead of a Python loop that drops converged rows.

    A row stops moving under the same test as in eager mode and keeps its threshold from then on, so both paths
    agree to rounding. There is no compaction (it changes shapes) and no early exit by Python ``if``; the loop
    ends when no row moves or after ``_MAX_NEWTON_STEPS``.
    """
    rows, d = z.shape
    per_row = torch.is_tensor(n)
    lo, hi, t_tol, mass_tol = _newton_bracket(z, n, scale)
    w_exponent = n - 1 if per_row else float(n) - 1.0

    def mass_terms(t):
        r = (z - t).clamp_min(0)
        if not per_row and w_exponent == 0.0:  # sparsemax
            s_n = r.sum(dim=-1, keepdim=True)
            return r.sign().sum(dim=-1, keepdim=True), s_n, s_n * scale
        if not per_row and w_exponent == 1.0:  # entmax15
            l2 = torch.linalg.vector_norm(r, 2, dim=-1, keepdim=True)
            return r.sum(dim=-1, keepdim=True), l2 * l2, l2 * scale
        w = torch.pow(r, w_exponent)
        if per_row:  # alpha = 2 rows: 0 ** 0 == 1 off the support
            w = w * torch.sign(r)
        s_n = (w * r).sum(dim=-1, keepdim=True)
        return w.sum(dim=-1, keepdim=True), s_n, torch.pow(s_n, 1.0 / n) * scale

    def keep_going(step, t, lo, hi, moving):
        return (step < _MAX_NEWTON_STEPS) & moving.any()

    def newton_step(step, t, lo, hi, moving):
        new_t, new_lo, new_hi, still = _newton_update(t, lo, hi, *mass_terms(t), t_tol, mass_tol)
        # rows that stopped earlier keep everything (eager mode has dropped them from the working set)
        return (step + 1, torch.where(moving, new_t, t), torch.where(moving, new_lo, lo),
                torch.where(moving, new_hi, hi), moving & still)

    # separate tensors: while_loop refuses carried values that alias each other
    start = (torch.zeros((), dtype=torch.int64, device=z.device), lo.clone(), lo, hi,
             torch.ones(rows, 1, dtype=torch.bool, device=z.device))
    t = torch.while_loop(keep_going, newton_step, start)[1]
    r = (z - t).clamp_min(0)
    if not per_row and w_exponent == 0.0:
        p = r
    elif not per_row and w_exponent == 1.0:
        p = r * r
    else:
        p = torch.pow(r, n)
    return p / p.sum(dim=-1, keepdim=True)


def _solve_rows(z: torch.Tensor, n, scale) -> torch.Tensor:
    return _entmax_rows_traced(z, n, scale) if _tracing() else _entmax_rows(z, n, scale)


class SparsemaxFunction(torch.autograd.Function):
    """p = [z - tau]_+ with tau chosen so that p sums to one."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        p = _solve_rows(_as_rows(z.to(_compute_dtype(z.dtype))), 1, 1.0).view(z.shape).to(z.dtype)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor) -> torch.Tensor:
        (p,) = ctx.saved_tensors
        dtype = _compute_dtype(p.dtype)
        support = torch.sign(p.to(dtype))  # 1 on the support, 0 elsewhere
        grad_z = grad_p.to(dtype) * support
        mean_grad = grad_z.sum(dim=-1, keepdim=True) / support.sum(dim=-1, keepdim=True)
        grad_z.addcmul_(support, mean_grad, value=-1)
        return grad_z.to(grad_p.dtype)


def _sqrt_keeping_zeros(p: torch.Tensor) -> torch.Tensor:
    """sqrt(p) for p >= 0 as p * rsqrt(p): exact zeros stay zero, and it avoids the slow sqrt(0) path on CPU."""
    return p.clamp_min(torch.finfo(p.dtype).tiny).rsqrt_().mul_(p)


class Entmax15Function(torch.autograd.Function):
    """p = [z / 2 - tau]_+^2 with the exact threshold of Peters, Niculae & Martins (2019)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        p = _solve_rows(_as_rows(z.to(_compute_dtype(z.dtype))), 2, 0.5).view(z.shape).to(z.dtype)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor) -> torch.Tensor:
        (p,) = ctx.saved_tensors
        dtype = _compute_dtype(p.dtype)
        sqrt_p = _sqrt_keeping_zeros(p.to(dtype))
        grad_z = grad_p.to(dtype) * sqrt_p
        q = grad_z.sum(dim=-1, keepdim=True) / sqrt_p.sum(dim=-1, keepdim=True)
        grad_z.addcmul_(sqrt_p, q, value=-1)
        return grad_z.to(grad_p.dtype)


class EntmaxNewtonFunction(torch.autograd.Function):
    """alpha-entmax: p = [(alpha - 1) z - tau]_+^(1 / (alpha - 1)).

    ``alpha`` is a Python float or a tensor broadcastable to ``z[..., :1]``; a tensor's gradient is returned with
    its own shape.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, alpha) -> torch.Tensor:
        shape, in_dtype, dtype = z.shape, z.dtype, _compute_dtype(z.dtype)
        z = _as_rows(z.to(dtype))
        ctx.alpha_is_tensor = torch.is_tensor(alpha)
        if ctx.alpha_is_tensor:
            ctx.alpha_shape, ctx.alpha_dtype = alpha.shape, alpha.dtype
            alpha = alpha.detach().to(dtype)
            am1 = _as_rows(alpha.expand(*shape[:-1], 1) - 1)  # [rows, 1]
            n = 1 / am1
            # The largest n decides whether raw scores are safe (below); a traced graph cannot read it, so it
            # always takes the scaled form, which gives the same answer to rounding.
            unscaled = not _tracing() and float(n.max()) <= _MAX_UNSCALED_N
        else:
            ctx.alpha_float = float(alpha)
            am1 = ctx.alpha_float - 1.0
            n = 1 / am1
            unscaled = n <= _MAX_UNSCALED_N
        # r^(n - 1) of raw scores would overflow for large n: then solve on (alpha - 1) * z, where r <= 1
        p = _solve_rows(z, n, am1) if unscaled else _solve_rows(z * am1, n, 1.0)
        p = p.view(shape).to(in_dtype)
        if ctx.alpha_is_tensor:
            ctx.save_for_backward(p, alpha)
        else:
            ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad_p: torch.Tensor):
        p, *alpha = ctx.saved_tensors
        out_dtype = p.dtype
        dtype = _compute_dtype(out_dtype)
        p = p.to(dtype)
        grad_p = grad_p.to(dtype)
        need_alpha = ctx.alpha_is_tensor and ctx.needs_input_grad[1]
        two_minus_alpha = 2 - alpha[0] if ctx.alpha_is_tensor else 2.0 - ctx.alpha_float
        # ds/dz for entmax: diag(s) - s s^T / sum(s) with s = p^(2 - alpha) on the support (pow(0, e > 0) = 0).
        if not ctx.alpha_is_tensor and two_minus_alpha == 0.5:  # pow(p, 0.5) takes the slow sqrt(0) path
            s = _sqrt_keeping_zeros(p)
        else:
            s = torch.pow(p, two_minus_alpha)
            # alpha = 2: p^0 would be 1 off the support (a traced graph cannot ask, so it always masks)
            if _tracing() or (bool((two_minus_alpha == 0).any()) if ctx.alpha_is_tensor else two_minus_alpha == 0):
                s = s * torch.sign(p)
        s_sum = s.sum(dim=-1, keepdim=True)
        grad_z = grad_p * s
        grad_dot_s = grad_z.sum(dim=-1, keepdim=True)
        grad_z.addcmul_(s, grad_dot_s / s_sum, value=-1)

        grad_alpha = None
        if need_alpha:
            # Blondel et al. (2020), Peters et al. (2019): dp/dalpha in closed form,
            #   dp/dalpha = (p - s~) / (alpha - 1)^2 - (p log p - s~ H) / (alpha - 1),  s~ = s / sum(s),
            #   H = sum p log p.
            # Built entry by entry (in the buffer of s), not from row sums: p and s~ nearly cancel, and for alpha
            # near 1 the 1 / (alpha - 1)^2 factor magnifies whatever the subtraction loses in float32.
            # log of a clamped p: log(0) is an order of magnitude slower on CPU, and the clamped zeros still give
            # p log p = 0 exactly.
            inv_am1 = 1 / (1 - two_minus_alpha)
            term = torch.clamp(p, min=torch.finfo(dtype).tiny).log_().mul_(p)  # p log p
            entropy_term = term.sum(dim=-1, keepdim=True)
            s_skewed = s.div_(s_sum)
            term.addcmul_(s_skewed, entropy_term, value=-1).mul_(-inv_am1)  # -(p log p - s~ H) / (alpha - 1)
            dp_dalpha = s_skewed.neg_().add_(p).mul_(inv_am1 * inv_am1).add_(term)
            grad_alpha = dp_dalpha.mul_(grad_p).sum(dim=-1, keepdim=True)
            grad_alpha = _sum_to_shape(grad_alpha, ctx.alpha_shape).to(ctx.alpha_dtype)
        return grad_z.to(out_dtype), grad_alpha


def _sum_to_shape(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reduce a broadcast gradient back to the shape of the tensor that was broadcast."""
    while t.dim() > len(shape):
        t = t.sum(dim=0)
    for i, n in enumerate(shape):
        if n == 1 and t.shape[i] != 1:
            t = t.sum(dim=i, keepdim=True)
    return t.reshape(shape)


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    return SparsemaxFunction.apply(z)


def entmax15(z: torch.Tensor) -> torch.Tensor:
    return Entmax15Function.apply(z)


def entmax_newton(z: torch.Tensor, alpha) -> torch.Tensor:
    """alpha-entmax for alpha in (1, 2]; alpha a float or a tensor broadcastable to ``z[..., :1]``.

    ValueError for an alpha outside (1, 2] (alpha = 1 is softmax: use ``softmax``). A traced graph cannot read a
    tensor alpha, so there the check is left to the caller.
    """
    if torch.is_tensor(alpha):
        if not _tracing() and not bool(((alpha > 1) & (alpha <= 2)).all()):
            bad = alpha[~((alpha > 1) & (alpha <= 2))].flatten()[0].item()
            raise ValueError(f"entmax_newton needs every alpha in (1, 2], got {bad:g}; use softmax for alpha = 1")
    else:
        alpha = float(alpha)
        if not 1.0 < alpha <= 2.0:
            raise ValueError(f"entmax_newton needs alpha in (1, 2], got {alpha:g}; use softmax for alpha = 1")
    return EntmaxNewtonFunction.apply(z, alpha)


def sparsegen_lin(z: torch.Tensor, lam: float) -> torch.Tensor:
    """sparsemax(z / (1 - lam)); larger lam (< 1) gives sparser outputs."""
    return SparsemaxFunction.apply(z / (1.0 - lam))


def softmax(z: torch.Tensor) -> torch.Tensor:
    return torch.softmax(z, dim=-1)
