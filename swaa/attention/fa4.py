"""FlashAttention-4 backend (CUDA compute capability >= 9.0, `pip install flash-attn-4`): the flash backend's split
calls (a window call for SWA rows, a causal call for full rows, the sink keys merged by log-sum-exp) on FA4's own
kernels; each call's backward is given the merged output and LSE, so it is exact. Unpadded batches (prefill, training
rows) run FA4's dense kernels: the SWA rows with their sinks in one block-sparse call (swaa.attention.fa4_blocks),
their backward FA4's window backward plus one Triton pass for the sink keys (swaa.attention.sink_backward).
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from swaa.attention.fa4_blocks import block_sparse, sink_window_attention, sparse_tiles_fit
from swaa.attention.flash import flash_attention_fn, flash_backward, flash_forward, flash_varlen_backward
from swaa.attention.inputs import LayerInputs
from swaa.masks import flash_window

# FA4's sm90 backward failed the float64 gradient check at head dimension 16 (4.0.0b36, 4.0.0b40; BENCHMARKS.md) and
# passed at these; at others the backward runs PyTorch's FlashAttention kernel (exact given the merged out and LSE).
TRUSTED_BACKWARD_HEAD_DIMS = (64, 128)


@functools.cache
def fa4_unavailable(device_index: int | None = None) -> str | None:
    """Why the FA4 backend cannot run on this CUDA device, or None when it can."""
    if not torch.cuda.is_available():
        return "it needs a CUDA GPU"
    if importlib.util.find_spec("flash_attn") is None or importlib.util.find_spec("flash_attn.cute") is None:
        return "it needs the flash-attn-4 package (pip install flash-attn-4)"
    major, _ = torch.cuda.get_device_capability(device_index)
    if major < 9:
        return f"it needs compute capability >= 9.0, this GPU has {major}.x"
    return None


def fa4_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale: float, window_left: int | None,
               causal: bool = True):
    """`flash_varlen`'s contract on FA4: q (Tq, Hq, D), k/v (Tk, Hkv, D) -> out (Tq, Hq, D), lse (Hq, Tq)."""
    from flash_attn.cute import flash_attn_varlen_func
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q,
                                  max_seqlen_k=max_k, softmax_scale=scale, causal=causal,
                                  window_size=(window_left, 0 if causal else None), return_lse=True)


def fa4_varlen_backward(d_out, q, k, v, out, lse, cu_q, cu_k, max_q: int, max_k: int, scale: float,
                        window_left: int | None, causal: bool = True):
    """FA4's backward of one `fa4_varlen` call, given the row's final out and LSE (Hq, Tq) -> (dq, dk, dv)."""
    from flash_attn.cute.interface import _flash_attn_bwd
    dq, dk, dv = _flash_attn_bwd(q, k, v, out, d_out, lse.contiguous(), scale, causal,
                                 window_size_left=window_left, window_size_right=0 if causal else None,
                                 cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k)
    return dq, dk, dv


def dense_rows(x: LayerInputs) -> int | None:
    """n when every sequence of the call is one unpadded prompt of the same length (plus answer rows) and rows [0, n)
    are its SWA rows (the rest full); None otherwise (padding, decode steps, packed or full-layer calls)."""
    if x.kind not in ("swa", "swa_fa_decode") or x.q_pos.shape != x.k_pos.shape:
        return None
    pos = torch.arange(x.q_pos.shape[1], device=x.q_pos.device)
    if not bool((x.q_pos == pos).all() & (x.k_pos == pos).all() & (x.prompt_len == x.prompt_len[0]).all()):
        return None
    return x.q_pos.shape[1] if x.kind == "swa" else min(int(x.prompt_len[0]), x.q_pos.shape[1])


def fa4_forward(query, key, value, x: LayerInputs, plan, scale: float, varlen=fa4_varlen):
    """`flash_forward` on FA4: unpadded calls by one dense call for the SWA rows (FA4's window, or with sinks its
    block-sparse mask where `sparse_tiles_fit`) and a dense causal call for the full rows; other calls by the split
    varlen calls."""
    from swaa.attention.sink_backward import takes_head_dim
    n = x.cached("fa4_dense", lambda: dense_rows(x))
    past_window = bool(n and x.sink and n > x.window)  # rows that also see sink keys outside their window
    if n is None or not takes_head_dim(query.shape[-1]) or (past_window and not sparse_tiles_fit(query.device)):
        return flash_forward(query, key, value, x, plan, scale, varlen)
    from flash_attn.cute import flash_attn_func

    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # (B, L, H, D)
    parts = []
    if past_window:
        tiles = x.cached("fa4_tiles", lambda: block_sparse(n, x.window, x.sink, q.shape[0], q.shape[2], q.device))
        parts.append(sink_window_attention(q[:, :n], k[:, :n], v[:, :n], x.window, x.sink, scale, tiles))
    elif n:
        parts.append(flash_attn_func(q[:, :n], k[:, :n], v[:, :n], softmax_scale=scale, causal=True,
                                     window_size=flash_window(x.window), return_lse=True))
    if n < q.shape[1]:
        parts.append(flash_attn_func(q[:, n:], k, v, softmax_scale=scale, causal=True, return_lse=True))
    out, lse = parts[0]
    if len(parts) == 2:
        out, lse = torch.cat([out, parts[1][0]], 1), torch.cat([lse, parts[1][1]], 2)
    return out, lse.transpose(1, 2)


def fa4_backward(d_out, query, key, value, out, lse, x: LayerInputs, plan, scale: float,
                 varlen_bwd=fa4_varlen_backward):
    """`flash_backward` on FA4: unpadded calls at the trusted head dimensions by FA4's dense backward of the window
    and causal calls and `sink_backward_`; other calls by the split varlen calls' backward."""
    n, d = x.cached("fa4_dense", lambda: dense_rows(x)), query.shape[-1]
    if n is None or d not in TRUSTED_BACKWARD_HEAD_DIMS:
        return flash_backward(d_out, query, key, value, out, lse, x, plan, scale, varlen_bwd)
    from flash_attn.cute.interface import _flash_attn_bwd

    from swaa.attention.sink_backward import sink_backward_
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # (B, L, H, D)
    lse = lse.transpose(1, 2)  # (B, Hq, L)
    parts = []
    if n:
        left, right = flash_window(x.window)
        parts.append(_flash_attn_bwd(q[:, :n], k[:, :n], v[:, :n], out[:, :n], d_out[:, :n], lse[..., :n], scale,
                                     True, window_size_left=left, window_size_right=right))
    if n < q.shape[1]:
        parts.append(_flash_attn_bwd(q[:, n:], k, v, out[:, n:], d_out[:, n:], lse[..., n:], scale, True))
    dq, dk, dv = parts[-1][:3]
    if len(parts) == 2:  # window call's keys: the first n of the causal call's
        dq = torch.cat([parts[0][0], dq], 1)
        dk[:, :n] += parts[0][1]
        dv[:, :n] += parts[0][2]
    if x.sink:
        sink_backward_(q, k, v, out, d_out, lse, dq, dk, dv, (x.window, n), x.window, x.sink, scale)
    return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)


def fa4_kernels(head_dim: int) -> dict:
    """The flash backend's kernel arguments for FA4 at this head dimension (`flash_attention`'s keywords)."""
    trusted = head_dim in TRUSTED_BACKWARD_HEAD_DIMS
    return {"varlen": fa4_varlen, "varlen_bwd": fa4_varlen_backward if trusted else flash_varlen_backward,
            "forward": fa4_forward, "backward": fa4_backward}


def fa4_attention_fn(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Attention with transformers' signature; q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D) -> (B, Lq, Hq, D)."""
    if query.device.type == "cuda" and (reason := fa4_unavailable(query.device.index)) is not None:
        raise RuntimeError(f"backend 'fa4' cannot run: {reason}")
    return flash_attention_fn(module, query, key, value, attention_mask, scaling, dropout, backend="fa4",
                              **fa4_kernels(query.shape[-1]), **kwargs)
