"""Chunked backend: blocks of queries, each through SDPA over only the keys its rows can see (window, sinks, or all
earlier keys for full rows), so SWA prefill costs O(n * (W + S + block)) instead of O(n^2). Any device, exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swaa.attention.inputs import LayerInputs, layer_inputs
from swaa.masks import dense_mask

BLOCK = 256  # queries per SDPA call


def _plan(x: LayerInputs) -> list[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Per query block: its slice, the key indices any of its rows sees, and the mask over those keys."""
    plan = []
    big = torch.iinfo(x.q_pos.dtype).max
    for start in range(0, x.q_pos.shape[1], BLOCK):
        rows = slice(start, start + BLOCK)
        q_pos = x.q_pos[:, rows]  # (B, C)
        last = q_pos.amax(1, keepdim=True)  # (B, 1)
        needed = (x.k_pos >= 0) & (x.k_pos <= last)  # (B, Lk)
        windowed = x.kind == "swa" or (x.kind == "swa_fa_decode" and not bool((q_pos >= x.prompt_len[:, None]).any()))
        if windowed and x.window is not None:
            first = torch.where(q_pos >= 0, q_pos, big).amin(1, keepdim=True)
            needed &= (x.k_pos > first - x.window) | (x.k_pos < x.sink)
        cols = needed.any(0).nonzero().squeeze(1)
        mask = dense_mask(q_pos, x.k_pos[:, cols], x.prompt_len, x.window, x.sink, x.kind)
        plan.append((rows, cols, mask | (q_pos < 0)[:, None, :, None]))  # padding queries: finite, ignored
    return plan


def chunked_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Attention with transformers' signature; q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D) -> (B, Lq, Hq, D)."""
    x = layer_inputs(module, query, key)
    gqa = query.shape[1] != key.shape[1]
    outs = [F.scaled_dot_product_attention(query[:, :, rows], key[:, :, cols], value[:, :, cols], attn_mask=mask,
                                           dropout_p=dropout, scale=scaling, enable_gqa=gqa)
            for rows, cols, mask in x.cached("chunked", lambda: _plan(x))]
    return torch.cat(outs, 2).transpose(1, 2).contiguous(), None
