"""FlexAttention backend: a block-sparse mask from swaa.masks' tile bounds and predicate, built once per forward and
layer kind.

PyTorch has no FlexAttention backward on CPU: there, calls that need gradients use 'reference' (logged once).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging

import torch
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from swaa.attention.inputs import LayerInputs, layer_inputs, needs_grad
from swaa.attention.reference import reference_attention
from swaa.masks import block_visibility, flex_mask_mod

log = logging.getLogger(__name__)
BLOCK = 128  # FlexAttention's tile, queries and keys
_TUNING = contextvars.ContextVar("swaa_flex_tuning", default=({}, None))  # (kernel_options, torch.compile mode)


@functools.cache
def _compiled_flex(mode: str | None):
    return torch.compile(flex_attention, mode=mode)


@contextlib.contextmanager
def tuning(kernel_options: dict, compile_mode: str | None = None):
    """Within this block, CUDA flex calls pass `kernel_options` (FlexKernelOptions) and compile with `compile_mode`."""
    token = _TUNING.set((dict(kernel_options), compile_mode))
    try:
        yield
    finally:
        _TUNING.reset(token)


def flex_attention_fn(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Attention with transformers' signature; compiled on CUDA, eager (PyTorch's math path) on CPU."""
    if dropout:
        raise ValueError(f"backend 'flex' does not support attention dropout (got {dropout}); use 'reference'")
    on_cuda = query.device.type == "cuda"
    if not on_cuda and needs_grad(query, key, value):
        _warn_cpu_backward()
        return reference_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    x = layer_inputs(module, query, key)
    block_mask = x.cached("flex", lambda: build_block_mask(x))
    gqa = query.shape[1] != key.shape[1]
    if on_cuda:
        options, mode = _TUNING.get()
        out = _compiled_flex(mode)(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=gqa,
                                   kernel_options=options or None)
    else:
        out = flex_attention(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def build_block_mask(x: LayerInputs) -> BlockMask:
    """The BlockMask of one call, from swaa.masks' tile bounds (no dense mask, nothing to compile)."""
    some, full = block_visibility(x.q_pos, x.k_pos, x.prompt_len, x.window, x.sink, x.kind, BLOCK)
    (partial_count, partial_idx), (full_count, full_idx) = (_ordered(t[:, None]) for t in (some & ~full, full))
    return BlockMask.from_kv_blocks(partial_count, partial_idx, full_count, full_idx, BLOCK_SIZE=BLOCK,
                                    mask_mod=flex_mask_mod(x.q_pos, x.k_pos, x.prompt_len, x.window, x.sink, x.kind),
                                    seq_lengths=(x.q_pos.shape[1], x.k_pos.shape[1]))


def _ordered(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, column indices with the set tiles first) per row of a bool (B, H, rows, cols) tile mask."""
    tiles = tiles.to(torch.int32)
    return tiles.sum(-1, dtype=torch.int32), torch.argsort(tiles, dim=-1, descending=True, stable=True).to(torch.int32)


@functools.cache
def _warn_cpu_backward() -> None:
    log.warning("FlexAttention has no CPU backward; SWAA calls that need gradients on CPU use 'reference' (exact)")
