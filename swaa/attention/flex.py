"""FlexAttention backend: a block-sparse mask from swaa.masks' tile bounds and predicate, built once per forward and
layer kind.

With gradients, SWA layers' sink keys leave the kernel: flex's backward would walk every query block for the one sink
key block in series. They are attended densely (n x S) and merged by log-sum-exp instead (exact).
PyTorch has no FlexAttention backward on CPU: there, calls that need gradients use 'reference' (logged once).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging

import torch
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, flex_attention

from swaa.attention.inputs import LayerInputs, layer_inputs
from swaa.attention.reference import reference_attention
from swaa.masks import block_visibility, flex_mask_mod

log = logging.getLogger(__name__)
BLOCK = 128  # FlexAttention's tile, queries and keys
# (kernel_options, torch.compile mode, split sinks: None = when gradients are needed)
_TUNING = contextvars.ContextVar("swaa_flex_tuning", default=({}, None, None))


@functools.cache
def _compiled_flex(mode: str | None):
    return torch.compile(flex_attention, mode=mode)


@contextlib.contextmanager
def tuning(kernel_options: dict, compile_mode: str | None = None, split_sinks: bool | None = None):
    """Within this block, CUDA flex calls pass `kernel_options` (FlexKernelOptions) and compile with `compile_mode`;
    `split_sinks` forces the sink keys out of (True) or into (False) the kernel, None splits them only for gradients."""
    token = _TUNING.set((dict(kernel_options), compile_mode, split_sinks))
    try:
        yield
    finally:
        _TUNING.reset(token)


def flex_attention_fn(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Attention with transformers' signature; compiled on CUDA, eager (PyTorch's math path) on CPU."""
    if dropout:
        raise ValueError(f"backend 'flex' does not support attention dropout (got {dropout}); use 'reference'")
    on_cuda = query.device.type == "cuda"
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    if not on_cuda and grad:
        _warn_cpu_backward()
        return reference_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    x = layer_inputs(module, query, key)
    options, mode, split = _TUNING.get()
    split = bool(x.sink) and x.kind != "full" and x.window is not None and (grad if split is None else split)
    first_key = x.sink if split else 0
    block_mask = x.cached(f"flex>={first_key}", lambda: build_block_mask(x, first_key))
    call = {"block_mask": block_mask, "scale": scaling, "enable_gqa": query.shape[1] != key.shape[1]}
    if on_cuda:
        attend = functools.partial(_compiled_flex(mode), kernel_options=options or None)
    else:
        attend = flex_attention
    if not split:
        return attend(query, key, value, **call).transpose(1, 2).contiguous(), None
    out, aux = attend(query, key, value, return_aux=AuxRequest(lse=True), **call)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    return merge_sinks(out, aux.lse, *sink_attention(query, key, value, x, scale)).transpose(1, 2).contiguous(), None


def sink_attention(query, key, value, x: LayerInputs, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of every query to its sequence's first S keys, in float32 (or float64): out (B, Hq, Lq, D) and
    LSE (B, Hq, Lq). Rows that see no sink key get a finite LSE far below any real one (weight 0 in a merge, no NaN)."""
    b, hq, lq, d = query.shape
    acc = torch.promote_types(query.dtype, torch.float32)
    hkv = key.shape[1]
    slots = torch.arange(x.sink, device=query.device)
    match = x.k_pos[:, None, :] == slots[None, :, None]  # (B, S, Lk): where each sink position sits
    idx = match.int().argmax(-1)[:, None, :, None].expand(b, hkv, x.sink, d)
    keys, values = (t.gather(2, idx).to(acc) for t in (key, value))
    seen = match.any(-1)[:, None, :] & (slots[None, None, :] <= x.q_pos[:, :, None])  # (B, Lq, S)
    scores = torch.einsum("bhgqd,bhsd->bhgqs", query.to(acc).view(b, hkv, hq // hkv, lq, d), keys) * scale
    scores = scores.masked_fill(~seen[:, None, None], -1e30)
    lse = scores.logsumexp(-1)
    out = torch.einsum("bhgqs,bhsd->bhgqd", torch.exp(scores - lse[..., None]), values)
    return out.reshape(b, hq, lq, d), lse.reshape(b, hq, lq)


def merge_sinks(out: torch.Tensor, lse: torch.Tensor, sink_out: torch.Tensor, sink_lse: torch.Tensor) -> torch.Tensor:
    """Softmax over the union of two disjoint key sets from each part's output and LSE; in `out`'s dtype."""
    total = torch.logaddexp(lse.to(sink_lse.dtype), sink_lse)
    share = lambda part_lse: torch.exp(part_lse - total)[..., None]  # noqa: E731
    return (out.to(sink_lse.dtype) * share(lse) + sink_out * share(sink_lse)).to(out.dtype)


def build_block_mask(x: LayerInputs, first_key: int = 0) -> BlockMask:
    """The BlockMask of one call over keys at positions >= `first_key`, from swaa.masks' tile bounds (no dense mask,
    nothing to compile)."""
    some, full = block_visibility(x.q_pos, x.k_pos, x.prompt_len, x.window, x.sink, x.kind, BLOCK, first_key)
    (partial_count, partial_idx), (full_count, full_idx) = (_ordered(t[:, None]) for t in (some & ~full, full))
    return BlockMask.from_kv_blocks(partial_count, partial_idx, full_count, full_idx, BLOCK_SIZE=BLOCK,
                                    mask_mod=flex_mask_mod(x.q_pos, x.k_pos, x.prompt_len, x.window, x.sink, x.kind,
                                                           first_key),
                                    seq_lengths=(x.q_pos.shape[1], x.k_pos.shape[1]))


def _ordered(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, column indices with the set tiles first) per row of a bool (B, H, rows, cols) tile mask."""
    tiles = tiles.to(torch.int32)
    return tiles.sum(-1, dtype=torch.int32), torch.argsort(tiles, dim=-1, descending=True, stable=True).to(torch.int32)


@functools.cache
def _warn_cpu_backward() -> None:
    log.warning("FlexAttention has no CPU backward; SWAA calls that need gradients on CPU use 'reference' (exact)")
