"""Calls that need no SWAA mask, run as one SDPA call (FA's own kernel on CUDA, differentiable everywhere).

Full layers without padding are plain causal attention; decode steps that see every key they are given (batch 1 on
a sink+window cache, or any layer under FA decode) are unmasked attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from swaa.attention.inputs import LayerInputs
from swaa.masks import dense_mask

ALL_VISIBLE_MAX_QUERIES = 16  # calls with at most this many queries check the whole (B, Lq, Lk) mask


def plain_sdpa_kwargs(x: LayerInputs) -> dict | None:
    """SDPA arguments ({'is_causal': ...}) when this call is plain attention, else None (one host sync)."""
    if x.kind == "full" and x.q_pos.shape == x.k_pos.shape and bool((x.k_pos >= 0).all()):
        return {"is_causal": True}
    if x.q_pos.shape[1] <= ALL_VISIBLE_MAX_QUERIES:
        if bool(dense_mask(x.q_pos, x.k_pos, x.prompt_len, x.window, x.sink, x.kind).all()):
            return {"is_causal": False}
    return None


def plain_attention(query, key, value, x: LayerInputs, scale: float) -> torch.Tensor | None:
    """(B, Lq, Hq, D) by one SDPA call when the call is plain (decided once per forward and layer kind), else None."""
    kwargs = x.cached("plain", lambda: plain_sdpa_kwargs(x))
    if kwargs is None:
        return None
    out = F.scaled_dot_product_attention(query, key, value, scale=scale, enable_gqa=query.shape[1] != key.shape[1],
                                         **kwargs)
    return out.transpose(1, 2).contiguous()
