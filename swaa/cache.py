"""KV cache layer for SWA layers that never attend beyond the window: keeps the first S and the last W-1 positions.

Its memory is constant in the prompt length; `returned_slots` tells the attention which cache indices it was given.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


class SinkWindowLayer(DynamicLayer):
    """Dynamic cache layer that drops keys no future query can see (sink keys and the last W-1 are kept)."""

    is_sliding = True

    def __init__(self, window: int, sink: int, key_positions) -> None:
        super().__init__()
        self.window, self.sink = window, sink
        self.key_positions = key_positions  # callable -> (B, seen + new) real-token positions of every cache index
        self.seen = 0
        self.slots = torch.empty(0, dtype=torch.long)
        self.returned_slots = self.slots

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.slots = self.slots.to(key_states.device)
        new = key_states.shape[-2]
        slots = torch.cat([self.slots, torch.arange(self.seen, self.seen + new, device=self.slots.device)])
        keys = torch.cat([self.keys, key_states], dim=-2)  # (B, H_kv, kept + new, D)
        values = torch.cat([self.values, value_states], dim=-2)
        self.returned_slots = slots
        pos = self.key_positions()[:, slots]  # (B, kept + new)
        is_sink = ((pos >= 0) & (pos < self.sink)).any(0)
        in_tail = torch.arange(len(slots), device=slots.device) >= len(slots) - (self.window - 1)
        keep = is_sink | in_tail
        self.keys, self.values, self.slots = keys[:, :, keep], values[:, :, keep], slots[keep]
        self.seen += new
        return keys, values

    def get_seq_length(self, *args, **kwargs) -> int:
        return self.seen

    def get_mask_sizes(self, *args, **kwargs) -> tuple[int, int]:
        raise NotImplementedError("SinkWindowLayer is only used under apply_swaa, whose attention builds its own masks")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("SinkWindowLayer cannot be cropped (dropped keys are gone)")

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        raise NotImplementedError("SinkWindowLayer does not support batch selection")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("SinkWindowLayer does not support beam expansion after prefill")
