"""CUDA routing of backend 'auto', by measurement (BENCHMARKS.md): flex for SWA prefill, FlashAttention elsewhere."""

from __future__ import annotations

import torch

from swaa.attention.flash import flash_attention_fn
from swaa.attention.flex import flex_attention_fn
from swaa.attention.inputs import layer_inputs

FLEX_MIN_QUERIES = 64  # below this (decode steps) the varlen flash kernel avoids building a block mask per step


def auto_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Full layers and decode steps in half precision without gradients -> flash; everything else -> flex."""
    half = query.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled("cuda")
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    kind = layer_inputs(module, query, key).kind
    if half and not grad and not dropout and (kind == "full" or query.shape[2] < FLEX_MIN_QUERIES):
        return flash_attention_fn(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    return flex_attention_fn(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
