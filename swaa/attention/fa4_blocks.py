"""Window + sink attention in one FlashAttention-4 call: the mask as a CuTe `mask_mod`, and the tiles it touches as
FA4's block-sparse lists (tiles partly visible get the mask, fully visible ones none), so the sink keys cost one more
key tile per query tile instead of a pass of their own.
"""

from __future__ import annotations

import functools

import torch

# The block-sparse tile, queries and keys: FA4's sm90 forward key tile at head dims <= 128 (it fits its query tile).
TILE = 128


def sparse_tiles_fit(device: torch.device) -> bool:
    """Whether FA4's forward takes TILE x TILE lists on this GPU: sm90, whose tiles fit them (GPU-tested). sm100 stages
    two 128-row query tiles and asks for 256-row query blocks (untested), so the fa4 backend splits calls there."""
    return torch.cuda.get_device_capability(device)[0] == 9


def tile_classes(length: int, window: int, sink: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full), each (M, N) bool over query x key tiles of `length` rows: whether the tile holds some but not
    all, or all, of its pairs visible (key j <= query i, and i - j < window or j < sink)."""
    i0 = torch.arange(0, length, TILE, device=device)[:, None]
    i1 = torch.clamp(i0 + TILE, max=length) - 1
    j0 = torch.arange(0, length, TILE, device=device)[None, :]
    j1 = torch.clamp(j0 + TILE, max=length) - 1
    some = (j0 <= i1) & ((j0 < sink) | (torch.clamp(i0 - j1, min=0) < window))  # nearest pair: (i0, j1) or j0
    every = (j1 <= i0) & ((j1 < sink) | (i1 - torch.clamp(j0, min=sink) < window))  # farthest non-sink pair
    return some & ~every, every


def tile_lists(length: int, window: int, sink: int, device=None) -> list[torch.Tensor]:
    """FA4's block-sparse lists of the mask at `length` rows: per query tile the count and indices (listed first,
    ascending) of its partial key tiles, then of its full ones."""
    lists = []
    for tiles in tile_classes(length, window, sink, device):
        lists += [tiles.sum(-1, dtype=torch.int32),
                  torch.argsort((~tiles).to(torch.int8), dim=-1, stable=True).to(torch.int32)]
    return lists


def block_sparse(length: int, window: int, sink: int, batch: int, heads: int, device):
    """`tile_lists` as FA4's forward `BlockSparseTensorsTorch`, broadcast over batch and query heads."""
    from flash_attn.cute.block_sparsity import BlockSparseTensorsTorch
    lists = tile_lists(length, window, sink, device)
    return BlockSparseTensorsTorch(*(t.expand(batch, heads, *t.shape) for t in lists), block_size=(TILE, TILE))


@functools.cache
def sink_window_mask(window: int, sink: int):
    """The mask as a CuTe `mask_mod` for FA4: key j visible to query i when j <= i and (i - j < window or j < sink).
    One function per (window, sink), so FA4 compiles each once."""
    import cutlass
    import cutlass.cute as cute
    from flash_attn.cute.utils import scalar_to_ssa

    @cute.jit
    def mask_mod(batch, head, q_idx, kv_idx, seqlen_info, aux_tensors):
        w, s = scalar_to_ssa(window, cutlass.Int32), scalar_to_ssa(sink, cutlass.Int32)
        return (kv_idx <= q_idx) & ((q_idx - kv_idx < w) | (kv_idx < s))

    return mask_mod


def sink_window_attention(q, k, v, window: int, sink: int, scale: float, tiles):
    """One FA4 call of the mask over q (B, L, Hq, D), k/v (B, L, Hkv, D), given `block_sparse`'s tiles for L ->
    out (B, L, Hq, D), lse (B, Hq, L)."""
    from flash_attn.cute.interface import _flash_attn_fwd
    out, lse = _flash_attn_fwd(q, k, v, softmax_scale=scale, mask_mod=sink_window_mask(window, sink),
                               block_sparse_tensors=tiles, return_lse=True)[:2]
    return out, lse
