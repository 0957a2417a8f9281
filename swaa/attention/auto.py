"""CUDA routing of backend 'auto', by measurement (BENCHMARKS.md): SDPA for calls without a SWAA mask, 'fa4' for SWA
prefill and training in half precision where flash-attn-4 runs (sm90+) at the head dimensions its GPU tests trust,
flex for them elsewhere, FlashAttention for full layers and decode steps."""

from __future__ import annotations

import torch

from swaa.attention.fa4 import TRUSTED_BACKWARD_HEAD_DIMS, fa4_attention_fn, fa4_unavailable
from swaa.attention.flash import flash_attention_fn
from swaa.attention.flex import flex_attention_fn
from swaa.attention.inputs import layer_inputs, needs_grad
from swaa.attention.plain import plain_attention

FLEX_MIN_QUERIES = 64  # below this (decode steps) the varlen flash kernel avoids building a block mask per step


def auto_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Plain calls -> one SDPA call; full layers and decode steps in half precision without gradients -> flash; other
    SWA calls in half precision at FA4's trusted head dimensions -> fa4 where flash-attn-4 runs; the rest -> flex."""
    x = layer_inputs(module, query, key)
    if not dropout:
        out = plain_attention(query, key, value, x, query.shape[-1] ** -0.5 if scaling is None else scaling)
        if out is not None:
            return out, None
    half = query.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled("cuda")
    grad = needs_grad(query, key, value)
    kind = x.kind
    if half and not grad and not dropout and (kind == "full" or query.shape[2] < FLEX_MIN_QUERIES):
        return flash_attention_fn(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    if (half and not dropout and kind != "full" and query.shape[-1] in TRUSTED_BACKWARD_HEAD_DIMS
            and fa4_unavailable(query.device.index) is None):
        return fa4_attention_fn(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    return flex_attention_fn(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
