"""FlexAttention backend: a block-sparse mask from swaa.masks' predicate, built once per forward and layer kind.

PyTorch has no FlexAttention backward on CPU: there, calls that need gradients use 'reference' (logged once).
"""

from __future__ import annotations

import functools
import logging

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from swaa.attention.inputs import layer_inputs
from swaa.attention.reference import reference_attention
from swaa.masks import flex_mask_mod

log = logging.getLogger(__name__)


@functools.cache
def _compiled_flex():
    return torch.compile(flex_attention)


def flex_attention_fn(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Attention with transformers' signature; compiled on CUDA, eager (PyTorch's math path) on CPU."""
    if dropout:
        raise ValueError(f"backend 'flex' does not support attention dropout (got {dropout}); use 'reference'")
    on_cuda = query.device.type == "cuda"
    if not on_cuda and torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        _warn_cpu_backward()
        return reference_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    x = layer_inputs(module, query, key)
    (b, _, lq, _), lk = query.shape, key.shape[2]
    block_mask = x.cached("flex", lambda: create_block_mask(
        flex_mask_mod(x.q_pos, x.k_pos, x.prompt_len, x.window, x.sink, x.kind),
        B=b, H=None, Q_LEN=lq, KV_LEN=lk, device=query.device, _compile=on_cuda))
    attend = _compiled_flex() if on_cuda else flex_attention
    out = attend(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def _warn_cpu_backward() -> None:
    log.warning("FlexAttention has no CPU backward; SWAA calls that need gradients on CPU use 'reference' (exact)")
