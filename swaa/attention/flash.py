"""Windowed FlashAttention backend (CUDA, forward only): varlen window/causal calls, sinks merged by log-sum-exp.

Uses Dao-AILab `flash_attn` when importable, else PyTorch's bundled kernel. With gradients required it hands the call
to the `flex` backend (logged once), since the sink merge has no fused backward here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging

import torch

from swaa.attention.flex import flex_attention_fn
from swaa.attention.inputs import LayerInputs, layer_inputs
from swaa.masks import flash_window

log = logging.getLogger(__name__)


@functools.cache
def _dao_flash():
    if importlib.util.find_spec("flash_attn") is None:
        return None
    from flash_attn import flash_attn_varlen_func
    return flash_attn_varlen_func


def flash_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale: float, window_left: int | None):
    """Causal (bottom-right aligned) varlen attention; q (Tq, Hq, D), k/v (Tk, Hkv, D) -> out, lse (Hq, Tq)."""
    dao = _dao_flash()
    if dao is not None:
        out, lse, _ = dao(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=True,
                          window_size=(-1 if window_left is None else window_left, 0), return_attn_probs=True)
        return out, lse
    out, lse, *_ = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, False, scale=scale,
        window_size_left=window_left, window_size_right=None if window_left is None else 0)
    return out, lse


@dataclasses.dataclass
class _Call:
    """One varlen call: which queries (B, Lq) and keys (B, Lk) take part, their cumulative lengths and maxima."""

    q_sel: torch.Tensor
    k_sel: torch.Tensor
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int


def _plan_call(q_sel: torch.Tensor, k_sel: torch.Tensor) -> _Call:
    nq, nk = q_sel.sum(1, dtype=torch.int32), k_sel.sum(1, dtype=torch.int32)
    zero = nq.new_zeros(1)
    return _Call(q_sel, k_sel, torch.cat([zero, nq.cumsum(0, dtype=torch.int32)]),
                 torch.cat([zero, nk.cumsum(0, dtype=torch.int32)]), int(nq.max()), int(nk.max()))


def _plan(x: LayerInputs) -> dict:
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
    plan = {"calls": calls, "swa_row": swa_row}
    if x.sink and "swa" in calls:
        # slot of each sink position j < S per row (B, S), and whether it exists in this call's keys
        match = x.k_pos[:, None, :] == torch.arange(x.sink, device=x.k_pos.device)[None, :, None]
        plan["sink_idx"], plan["sink_ok"] = match.int().argmax(-1), match.any(-1)
    return plan


def _sink_part(query, key, value, x: LayerInputs, plan: dict, scale: float):
    """Dense attention of SWA rows to the sink keys left of their window: out (B, Lq, Hq, D), lse (B, Lq, Hq)."""
    b, hq, lq, d = query.shape
    hkv = key.shape[1]
    idx = plan["sink_idx"][:, None, :, None].expand(b, hkv, x.sink, d)
    ks, vs = key.gather(2, idx).float(), value.gather(2, idx).float()  # (B, Hkv, S, D)
    j = torch.arange(x.sink, device=query.device)
    ok = plan["sink_ok"][:, None, :] & (j[None, None, :] <= x.q_pos[:, :, None] - x.window) \
        & plan["swa_row"][:, :, None]  # (B, Lq, S)
    qg = query.float().view(b, hkv, hq // hkv, lq, d)
    scores = torch.einsum("bhgqd,bhsd->bhgqs", qg, ks) * scale
    scores = scores.masked_fill(~ok[:, None, None], float("-inf"))
    lse = scores.logsumexp(-1)  # (B, Hkv, G, Lq)
    probs = torch.exp(scores - lse[..., None]).nan_to_num(0.0)
    out = torch.einsum("bhgqs,bhsd->bhgqd", probs, vs)
    return out.reshape(b, hq, lq, d).transpose(1, 2), lse.reshape(b, hq, lq).transpose(1, 2)


def flash_attention_fn(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Attention with transformers' signature; q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D) -> (B, Lq, Hq, D)."""
    if query.device.type != "cuda":
        raise RuntimeError(f"backend 'flash' needs a CUDA device, got {query.device}; use 'flex' or 'reference'")
    if query.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"backend 'flash' needs float16 or bfloat16 inputs, got {query.dtype}; use 'flex'")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        _warn_backward_fallback()
        return flex_attention_fn(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    if dropout:
        raise ValueError(f"backend 'flash' does not support attention dropout (got {dropout})")
    x = layer_inputs(module, query, key)
    plan = x.cached("flash", lambda: _plan(x))
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    b, hq, lq, d = query.shape
    q_t, k_t, v_t = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # (B, L, H, D)
    out = query.new_zeros(b, lq, hq, d)
    lse_swa = None
    for name, c in plan["calls"].items():
        o, lse = flash_varlen(q_t[c.q_sel], k_t[c.k_sel], v_t[c.k_sel], c.cu_q, c.cu_k, c.max_q, c.max_k, scale,
                              flash_window(x.window)[0] if name == "swa" else None)
        out[c.q_sel] = o
        if name == "swa":
            lse_swa = query.new_full((b, lq, hq), float("-inf"), dtype=torch.float32)
            lse_swa[c.q_sel] = lse.transpose(0, 1).float()
    if "sink_idx" in plan:
        o_sink, lse_sink = _sink_part(query, key, value, x, plan, scale)
        lse = torch.logaddexp(lse_swa, lse_sink)
        w_win = torch.exp(lse_swa - lse).nan_to_num(0.0)[..., None]
        w_sink = torch.exp(lse_sink - lse).nan_to_num(0.0)[..., None]
        out = (out.float() * w_win + o_sink * w_sink).to(query.dtype)
    return out, None


@functools.cache
def _warn_backward_fallback() -> None:
    log.warning("backend 'flash' has no backward here; calls that need gradients use 'flex' (exact, same semantics)")
