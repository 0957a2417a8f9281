"""The one definition of "visible" for SWAA (docs/semantics.md), and its dense and FlexAttention derivations.

Positions are 0-based positions of real tokens in their sequence; padding keys and queries carry position -1.
"""

from __future__ import annotations

import torch

from swaa.config import LayerKind


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, prompt_len: torch.Tensor,
            window: int | None, sink: int, kind: LayerKind) -> torch.Tensor:
    """True where the query at `q_pos` sees the key at `k_pos` (all arguments broadcast elementwise).

    Full layers (or answer rows, q_pos >= prompt_len, of 'swa_fa_decode' layers): j <= i.
    SWA rows: j <= i and (i - j < window or j < sink); `window` counts the query itself.
    """
    causal = _causal(q_pos, k_pos)
    if kind == "full" or window is None:
        return causal
    return causal & _local(q_pos, k_pos, prompt_len, window, sink, kind == "swa_fa_decode")


def _causal(i, j):
    """A real key at or before the query."""
    return (j >= 0) & (j <= i)


def _local(i, j, prompt_len, window, sink, fa_decode):
    """What an SWA row adds to causality: inside the window, a sink key, or (FA decode) an answer row."""
    return (i - j < window) | (j < sink) | (fa_decode & (i >= prompt_len))


def dense_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, prompt_len: torch.Tensor,
               window: int | None, sink: int, kind: LayerKind) -> torch.Tensor:
    """Boolean mask (B, 1, Lq, Lk) from query positions (B, Lq), key positions (B, Lk), prompt lengths (B,)."""
    return visible(q_pos[:, None, :, None], k_pos[:, None, None, :], prompt_len[:, None, None, None],
                   window, sink, kind)


def flex_mask_mod(q_pos: torch.Tensor, k_pos: torch.Tensor, prompt_len: torch.Tensor,
                  window: int | None, sink: int, kind: LayerKind):
    """FlexAttention `mask_mod(b, h, q_idx, kv_idx)` for the same predicate, in one form for every layer kind (a full
    layer is a window no query reaches past; FA decode a flag). The rule is captured as tensors, so torch.compile
    traces one mask function for every config instead of specialising (and recompiling) on window, sink or kind."""
    full = kind == "full" or window is None
    batch = q_pos.shape[0]  # one value per sequence, indexed by b: FA4's CuTe DSL code cannot index a 0-dim tensor
    window, sink, fa_decode = (torch.full((batch,), v, device=q_pos.device) for v in (
        torch.iinfo(torch.int32).max if full else window, 0 if full else sink, kind == "swa_fa_decode"))

    def mask_mod(b, h, q_idx, kv_idx):
        i, j = q_pos[b, q_idx], k_pos[b, kv_idx]
        return _causal(i, j) & _local(i, j, prompt_len[b], window[b], sink[b], fa_decode[b])

    return mask_mod


def block_visibility(q_pos: torch.Tensor, k_pos: torch.Tensor, prompt_len: torch.Tensor, window: int | None,
                     sink: int, kind: LayerKind, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(some, full): bool (B, Lq/block, Lk/block) tiles of `visible`, from each tile's extreme positions alone.

    `some` is a superset of the tiles with a visible pair, `full` a subset of the tiles whose pairs are all visible
    (padding in a tile makes it not full). Costs O(L/block) per tile, never a dense mask.
    """
    (q_lo, q_hi, q_pad), (k_lo, k_hi, k_pad) = _tile_ranges(q_pos, block), _tile_ranges(k_pos, block)
    q_lo, q_hi, q_pad = q_lo[:, :, None], q_hi[:, :, None], q_pad[:, :, None]
    k_lo, k_hi, k_pad = k_lo[:, None, :], k_hi[:, None, :], k_pad[:, None, :]
    real = (q_hi >= 0) & (k_hi >= 0)
    some, full = real & (k_lo <= q_hi), ~q_pad & ~k_pad & (k_hi <= q_lo)
    if kind != "full" and window is not None:
        some_local, full_local = (q_lo - k_hi < window) | (k_lo < sink), (q_hi - k_lo < window) | (k_hi < sink)
        if kind == "swa_fa_decode":
            p = prompt_len[:, None, None]
            some_local, full_local = some_local | (q_hi >= p), full_local | (q_lo >= p)
        some, full = some & some_local, full & full_local
    return some, full & some


def _tile_ranges(pos: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per tile of `block` positions (B, L/block): smallest and largest real position (-1 if none), any padding."""
    b, n = pos.shape
    tiles = torch.nn.functional.pad(pos, (0, -n % block), value=-1).view(b, -1, block)
    pad = tiles < 0
    big = torch.iinfo(pos.dtype).max
    lo = tiles.masked_fill(pad, big).amin(-1)
    return torch.where(lo == big, -1, lo), tiles.amax(-1), pad.any(-1)


def flash_window(window: int) -> tuple[int, int]:
    """FlashAttention `window_size=(left, right)` for our W: the query plus W-1 keys to its left."""
    return window - 1, 0
