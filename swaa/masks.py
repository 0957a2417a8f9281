"""The one definition of "visible" for SWAA (DESIGN.md section 2), and its dense and FlexAttention derivations.

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
    causal = (k_pos >= 0) & (k_pos <= q_pos)
    if kind == "full" or window is None:
        return causal
    local = (q_pos - k_pos < window) | (k_pos < sink)
    if kind == "swa_fa_decode":
        local = local | (q_pos >= prompt_len)
    return causal & local


def dense_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, prompt_len: torch.Tensor,
               window: int | None, sink: int, kind: LayerKind) -> torch.Tensor:
    """Boolean mask (B, 1, Lq, Lk) from query positions (B, Lq), key positions (B, Lk), prompt lengths (B,)."""
    return visible(q_pos[:, None, :, None], k_pos[:, None, None, :], prompt_len[:, None, None, None],
                   window, sink, kind)


def flex_mask_mod(q_pos: torch.Tensor, k_pos: torch.Tensor, prompt_len: torch.Tensor,
                  window: int | None, sink: int, kind: LayerKind):
    """FlexAttention `mask_mod(b, h, q_idx, kv_idx)` for the same predicate; tensors are captured, not copied."""

    def mask_mod(b, h, q_idx, kv_idx):
        return visible(q_pos[b, q_idx], k_pos[b, kv_idx], prompt_len[b], window, sink, kind)

    return mask_mod


def flash_window(window: int) -> tuple[int, int]:
    """FlashAttention `window_size=(left, right)` for our W: the query plus W-1 keys to its left."""
    return window - 1, 0
