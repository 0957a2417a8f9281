"""Windowed FlashAttention backend (CUDA): varlen window/causal calls, sinks merged by log-sum-exp.

Forward uses Dao-AILab `flash_attn` when importable, else PyTorch's bundled kernel; backward uses PyTorch's bundled
FA backward per call, given the merged output and LSE (exact: the softmax statistics are those of the whole row).
"""

from __future__ import annotations

import dataclasses
import functools

import torch

from swaa.attention.inputs import LayerInputs, layer_inputs, needs_grad
from swaa.attention.plain import plain_attention
from swaa.masks import flash_window


@functools.cache
def _dao_flash():
    """Dao-AILab's varlen kernel (flash-attn 2), or None; flash-attn-4 alone installs a `flash_attn` without it."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


def flash_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale: float, window_left: int | None,
                 causal: bool = True):
    """Varlen attention (causal is bottom-right aligned); q (Tq, Hq, D), k/v (Tk, Hkv, D) -> out, lse (Hq, Tq)."""
    dao = _dao_flash()
    right = 0 if causal else -1
    if dao is not None:
        out, lse, _ = dao(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=causal,
                          window_size=(-1 if window_left is None else window_left, right), return_attn_probs=True)
        return out, lse
    out, lse, *_ = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False, scale=scale,
        window_size_left=window_left, window_size_right=None if window_left is None else right)
    return out, lse


def flash_varlen_backward(d_out, q, k, v, out, lse, cu_q, cu_k, max_q: int, max_k: int, scale: float,
                          window_left: int | None, causal: bool = True):
    """FA backward of one `flash_varlen` call, given the row's final out and LSE (Hq, Tq) -> (dq, dk, dv)."""
    right = 0 if causal else -1
    no_rng = torch.empty(0, dtype=torch.int64, device=q.device)  # dropout 0: the kernel reads no RNG state
    dq, dk, dv = torch.ops.aten._flash_attention_backward(
        d_out.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous(), lse.contiguous(),
        cu_q, cu_k, max_q, max_k, 0.0, causal, no_rng, no_rng, scale=scale, window_size_left=window_left,
        window_size_right=None if window_left is None else right)
    return dq, dk, dv


@dataclasses.dataclass
class _Call:
    """One varlen call: which queries (B, Lq) and keys (B, Lk) take part, their cumulative lengths and maxima."""

    q_sel: torch.Tensor
    k_sel: torch.Tensor
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int
    q_span: tuple[int, int] | None  # batch of 1 with a contiguous selection: slice [a, b) instead of gather/scatter
    k_span: tuple[int, int] | None


@dataclasses.dataclass
class Plan:
    """The calls of one forward: a windowed call for SWA rows and a causal call for full rows (by name), and for sink
    keys their slot per sequence (B, S), the rows that see all S sinks (one varlen call) and the edge rows that see
    only some of them ((batch, query) indices)."""

    calls: dict[str, _Call]
    sink_idx: torch.Tensor | None = None
    bulk_call: _Call | None = None
    edge_rows: tuple[torch.Tensor, torch.Tensor] | None = None


def _plan_call(q_sel: torch.Tensor, k_sel: torch.Tensor) -> _Call:
    nq, nk = q_sel.sum(1, dtype=torch.int32), k_sel.sum(1, dtype=torch.int32)
    nq, nk = nq[nq > 0], nk[nq > 0]  # sequences without queries in this call have no keys in it either
    zero = nq.new_zeros(1)
    return _Call(q_sel, k_sel, torch.cat([zero, nq.cumsum(0, dtype=torch.int32)]),
                 torch.cat([zero, nk.cumsum(0, dtype=torch.int32)]), int(nq.max()), int(nk.max()),
                 _span(q_sel), _span(k_sel))


def _span(sel: torch.Tensor) -> tuple[int, int] | None:
    """[a, b) if `sel` (1, L) selects one contiguous run, else None."""
    if sel.shape[0] != 1:
        return None
    idx = sel[0].nonzero()
    a, b = int(idx[0]), int(idx[-1]) + 1
    return (a, b) if b - a == len(idx) else None


def _pack(t: torch.Tensor, sel: torch.Tensor, span: tuple[int, int] | None) -> torch.Tensor:
    """(B, L, H, D) -> (T, H, D) of the selected tokens: a view for a contiguous span, else a gather."""
    return t[0, span[0]:span[1]] if span else t[sel]


def _unpack(out: torch.Tensor, sel: torch.Tensor, span: tuple[int, int] | None, packed: torch.Tensor) -> None:
    """Write packed rows (T, ...) back into (B, L, ...) at the selected positions."""
    if span:
        out[0, span[0]:span[1]] = packed
    else:
        out[sel] = packed


def _plan(x: LayerInputs) -> Plan:
    """Split queries into SWA rows (windowed call) and full rows (causal call); pick each call's contiguous keys."""
    q_valid, k_valid = x.q_pos >= 0, x.k_pos >= 0
    full_row = q_valid if x.kind == "full" else q_valid & (x.q_pos >= x.prompt_len[:, None]) \
        if x.kind == "swa_fa_decode" else torch.zeros_like(q_valid)
    swa_row = q_valid & ~full_row
    big = torch.iinfo(x.q_pos.dtype).max
    calls = {}
    for name, rows in (("swa", swa_row), ("full", full_row)):
        if not bool(rows.any()):
            continue
        q_last = torch.where(rows, x.q_pos, -1).amax(1, keepdim=True)  # (B, 1)
        k_first = torch.zeros_like(q_last)
        if name == "swa":
            q_first = torch.where(rows, x.q_pos, big).amin(1, keepdim=True)
            k_first = (q_first - x.window + 1).clamp(min=0)
        calls[name] = _plan_call(rows, k_valid & (x.k_pos >= k_first) & (x.k_pos <= q_last))
    plan = Plan(calls)
    sees_sink = swa_row & (x.q_pos >= x.window)  # some sink key j < S lies left of the window: j <= i - W
    if x.sink and bool(sees_sink.any()):
        # slot of each sink position j < S per row (B, S); rows reaching i >= W + S - 1 see all S sinks
        match = x.k_pos[:, None, :] == torch.arange(x.sink, device=x.k_pos.device)[None, :, None]
        bulk = sees_sink & (x.q_pos >= x.window + x.sink - 1)
        plan.sink_idx = match.int().argmax(-1)
        edge = (sees_sink & ~bulk).nonzero(as_tuple=True)  # (batch, query) indices; host syncs once per forward
        plan.edge_rows = edge if len(edge[0]) else None
        if bool(bulk.any()):
            has = bulk.any(1, keepdim=True).expand(-1, x.sink)
            plan.bulk_call = _plan_call(bulk, has)
    return plan


def _sink_keys(k_t, v_t, x: LayerInputs, plan: Plan):
    """The S sink keys and values of each sequence (B, S, Hkv, D), and their gather index."""
    b, _, hkv, d = k_t.shape
    idx = plan.sink_idx[:, :, None, None].expand(b, x.sink, hkv, d)
    return k_t.gather(1, idx), v_t.gather(1, idx), idx


def _edge_scores(q_t, ks, vs, x: LayerInputs, rows, scale: float, acc: torch.dtype):
    """Edge rows (E, Hkv, G, D) against their sink keys/values (E, S, Hkv, D): scores (E, Hkv, G, S), -inf if unseen."""
    hq, d, hkv = q_t.shape[2], q_t.shape[3], ks.shape[2]
    q_e = q_t[rows].to(acc).view(-1, hkv, hq // hkv, d)
    k_e, v_e = ks[rows[0]].to(acc), vs[rows[0]].to(acc)
    ok = torch.arange(x.sink, device=q_t.device)[None, :] <= (x.q_pos[rows] - x.window)[:, None]  # (E, S)
    scores = (torch.einsum("ehgd,eshd->ehgs", q_e, k_e) * scale).masked_fill(~ok[:, None, None, :], float("-inf"))
    return q_e, k_e, v_e, scores


def _sink_part(q_t, k_t, v_t, x: LayerInputs, plan: Plan, scale: float, varlen):
    """Attention of SWA rows to the sink keys left of their window: out (B, Lq, Hq, D), lse (B, Lq, Hq) (-inf: none).

    Rows with i >= W + S - 1 see all S sinks: one non-causal flash call. The < S-1 rows before them: dense float32.
    """
    b, lq, hq, d = q_t.shape
    ks, vs, _ = _sink_keys(k_t, v_t, x, plan)
    acc = torch.promote_types(q_t.dtype, torch.float32)  # float32, or float64 for float64 inputs
    out = q_t.new_zeros(b, lq, hq, d)
    lse = q_t.new_full((b, lq, hq), float("-inf"), dtype=acc)
    if plan.bulk_call is not None:
        c = plan.bulk_call
        o, o_lse = varlen(_pack(q_t, c.q_sel, c.q_span), ks[c.k_sel], vs[c.k_sel], c.cu_q, c.cu_k, c.max_q, c.max_k,
                          scale, None, causal=False)
        _unpack(out, c.q_sel, c.q_span, o)
        _unpack(lse, c.q_sel, c.q_span, o_lse.transpose(0, 1))
    if plan.edge_rows is not None:
        rows = plan.edge_rows  # (batch index, query index) of each edge row
        _, _, v_e, scores = _edge_scores(q_t, ks, vs, x, rows, scale, acc)
        l_e = scores.logsumexp(-1)  # (E, Hkv, G)
        o_e = torch.einsum("ehgs,eshd->ehgd", torch.softmax(scores, -1), v_e)
        out[rows], lse[rows] = o_e.reshape(-1, hq, d).to(out.dtype), l_e.reshape(-1, hq)
    return out, lse


def _sink_backward(d_out, q_t, k_t, v_t, out, lse, x: LayerInputs, plan: Plan, scale: float, varlen_bwd, grads):
    """Add the sink keys' share of the gradients to `grads` (dq, dk, dv), given the merged output and LSE."""
    dq, dk, dv = grads
    hq, d, hkv = q_t.shape[2], q_t.shape[3], k_t.shape[2]
    ks, vs, idx = _sink_keys(k_t, v_t, x, plan)
    dks, dvs = torch.zeros_like(ks, dtype=dk.dtype), torch.zeros_like(vs, dtype=dv.dtype)
    if plan.bulk_call is not None:
        c = plan.bulk_call
        g_q, g_k, g_v = varlen_bwd(*(_pack(t, c.q_sel, c.q_span) for t in (d_out, q_t)), ks[c.k_sel], vs[c.k_sel],
                                   _pack(out, c.q_sel, c.q_span), _pack(lse, c.q_sel, c.q_span).transpose(0, 1),
                                   c.cu_q, c.cu_k, c.max_q, c.max_k, scale, None, causal=False)
        _accumulate(dq, c.q_sel, c.q_span, g_q)
        dks[c.k_sel] += g_k.to(dks.dtype)
        dvs[c.k_sel] += g_v.to(dvs.dtype)
    if plan.edge_rows is not None:
        rows = plan.edge_rows
        q_e, k_e, v_e, scores = _edge_scores(q_t, ks, vs, x, rows, scale, dq.dtype)
        p = torch.exp(scores - lse[rows].view(-1, hkv, hq // hkv, 1))  # probabilities within the whole row
        d_o, o_e = (t[rows].to(dq.dtype).view(q_e.shape) for t in (d_out, out))
        d_s = p * (torch.einsum("ehgd,eshd->ehgs", d_o, v_e) - (d_o * o_e).sum(-1, keepdim=True))
        dq.index_put_(rows, torch.einsum("ehgs,eshd->ehgd", d_s, k_e).reshape(-1, hq, d) * scale, accumulate=True)
        dks.index_put_((rows[0],), torch.einsum("ehgs,ehgd->eshd", d_s, q_e) * scale, accumulate=True)
        dvs.index_put_((rows[0],), torch.einsum("ehgs,ehgd->eshd", p, d_o), accumulate=True)
    dk.scatter_add_(1, idx, dks)
    dv.scatter_add_(1, idx, dvs)


def _accumulate(grad: torch.Tensor, sel: torch.Tensor, span: tuple[int, int] | None, packed: torch.Tensor) -> None:
    """grad[selected positions] += packed rows (T, ...)."""
    if span:
        grad[0, span[0]:span[1]] += packed.to(grad.dtype)
    else:
        grad[sel] += packed.to(grad.dtype)


def flash_attention_fn(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, *,
                       backend: str = "flash", varlen=flash_varlen, varlen_bwd=flash_varlen_backward,
                       forward=None, backward=None, **kwargs):
    """Attention with transformers' signature; q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D) -> (B, Lq, Hq, D).

    `varlen`/`varlen_bwd`: the split calls' kernels (`flash_varlen`'s contract); `backend` names them in errors;
    `forward`/`backward`: replace `flash_forward`/`flash_backward` (same arguments and results).
    """
    if query.device.type != "cuda":
        raise RuntimeError(f"backend '{backend}' needs a CUDA device, got {query.device}; use 'flex' or 'reference'")
    if query.dtype not in (torch.float16, torch.bfloat16):
        if not torch.is_autocast_enabled("cuda"):
            raise ValueError(f"backend '{backend}' needs float16 or bfloat16 inputs, got {query.dtype}; use 'flex'")
        half = torch.get_autocast_dtype("cuda")  # mixed precision: attention runs in the autocast dtype, like SDPA
        query, key, value = query.to(half), key.to(half), value.to(half)
    if dropout:
        raise ValueError(f"backend '{backend}' does not support attention dropout (got {dropout})")
    x = layer_inputs(module, query, key)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    return flash_attention(query, key, value, x, scale, varlen, varlen_bwd, forward, backward), None


def flash_attention(query, key, value, x: LayerInputs, scale: float, varlen=flash_varlen,
                    varlen_bwd=flash_varlen_backward, forward=None, backward=None) -> torch.Tensor:
    """SWAA attention (B, Lq, Hq, D) by FlashAttention calls; differentiable when the inputs require gradients."""
    out = plain_attention(query, key, value, x, scale)
    if out is not None:
        return out
    plan = x.cached("flash", lambda: _plan(x))
    forward = forward or flash_forward
    if needs_grad(query, key, value):
        return _FlashSWAA.apply(query, key, value, x, plan, scale, varlen, varlen_bwd, forward,
                                backward or flash_backward)
    return forward(query, key, value, x, plan, scale, varlen)[0]


class _FlashSWAA(torch.autograd.Function):
    """Backward of the split calls: each call's FA backward given the merged output and LSE gives exact gradients."""

    @staticmethod
    def forward(ctx, query, key, value, x, plan, scale, varlen, varlen_bwd, forward, backward):
        out, lse = forward(query, key, value, x, plan, scale, varlen)
        ctx.save_for_backward(query, key, value, out, lse)
        ctx.x, ctx.plan, ctx.scale, ctx.varlen_bwd, ctx.backward = x, plan, scale, varlen_bwd, backward
        return out

    @staticmethod
    def backward(ctx, d_out):
        query, key, value, out, lse = ctx.saved_tensors
        return (*ctx.backward(d_out, query, key, value, out, lse, ctx.x, ctx.plan, ctx.scale, ctx.varlen_bwd),
                None, None, None, None, None, None, None)


def flash_forward(query, key, value, x: LayerInputs, plan: Plan, scale: float, varlen=flash_varlen):
    """Window call for SWA rows, causal call for full rows, then the sink keys merged in by log-sum-exp.

    Returns out (B, Lq, Hq, D) and each row's log-sum-exp over all its keys (B, Lq, Hq; -inf for padding rows).
    """
    b, hq, lq, d = query.shape
    q_t, k_t, v_t = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # (B, L, H, D)
    calls = plan.calls
    whole = len(calls) == 1 and next(iter(calls.values())).q_span == (0, lq)
    out = None if whole else query.new_zeros(b, lq, hq, d)
    lse_all = query.new_full((b, lq, hq), float("-inf"), dtype=torch.promote_types(query.dtype, torch.float32))
    for name, c in calls.items():
        o, lse = varlen(_pack(q_t, c.q_sel, c.q_span), _pack(k_t, c.k_sel, c.k_span), _pack(v_t, c.k_sel, c.k_span),
                        c.cu_q, c.cu_k, c.max_q, c.max_k, scale, flash_window(x.window)[0] if name == "swa" else None)
        if whole:
            out = o.view(b, lq, hq, d)
        else:
            _unpack(out, c.q_sel, c.q_span, o)
        _unpack(lse_all, c.q_sel, c.q_span, lse.transpose(0, 1))
    if plan.sink_idx is not None:
        o_sink, lse_sink = _sink_part(q_t, k_t, v_t, x, plan, scale, varlen)
        merged = torch.logaddexp(lse_all, lse_sink)
        # share of the sink keys in each row's softmax: 0 where a row has none (NaN from -inf - -inf included)
        w_sink = torch.exp(lse_sink - merged).nan_to_num(0.0)[..., None]
        out, lse_all = out.lerp(o_sink, w_sink.to(out.dtype)), merged  # one pass, rounded once
    return out, lse_all


def flash_backward(d_out, query, key, value, out, lse, x: LayerInputs, plan: Plan, scale: float,
                   varlen_bwd=flash_varlen_backward):
    """Gradients (dq, dk, dv) in the layout of query/key/value, from each call's backward with the merged out/LSE."""
    q_t, k_t, v_t = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    acc = torch.promote_types(query.dtype, torch.float32)
    grads = tuple(torch.zeros(t.shape, dtype=acc, device=t.device) for t in (q_t, k_t, v_t))
    for name, c in plan.calls.items():
        g = varlen_bwd(_pack(d_out, c.q_sel, c.q_span), _pack(q_t, c.q_sel, c.q_span), _pack(k_t, c.k_sel, c.k_span),
                       _pack(v_t, c.k_sel, c.k_span), _pack(out, c.q_sel, c.q_span),
                       _pack(lse, c.q_sel, c.q_span).transpose(0, 1), c.cu_q, c.cu_k, c.max_q, c.max_k, scale,
                       flash_window(x.window)[0] if name == "swa" else None)
        for grad, sel, span, packed in zip(grads, (c.q_sel, c.k_sel, c.k_sel), (c.q_span, c.k_span, c.k_span), g):
            _accumulate(grad, sel, span, packed)
    if plan.sink_idx is not None:
        _sink_backward(d_out, q_t, k_t, v_t, out, lse, x, plan, scale, varlen_bwd, grads)
    return tuple(g.transpose(1, 2).to(t.dtype) for g, t in zip(grads, (query, key, value)))
