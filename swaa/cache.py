"""KV cache layers for SWA layers that never attend beyond the window: keep the first S and the last W-1 positions.

Their memory is constant in the prompt length. All SWA layers of one cache hold the same slots, so a shared
`SlotPlan` decides once per forward which cache slots are returned and which are kept (one host sync per step).
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers.cache_utils import DynamicLayer


class SlotPlan:
    """Which cache slots (indices of tokens seen so far) the SWA layers keep; shared by all of them."""

    def __init__(self, window: int, sink: int, key_positions: Callable[[], torch.Tensor]) -> None:
        self.window, self.sink = window, sink
        self.key_positions = key_positions  # -> (B, seen + new) real-token positions of every slot of this forward
        self.kept: torch.Tensor | None = None  # slots held after the last step, ascending
        self.seen = 0
        self.step_of: int | None = None  # `seen` before the current step: the step the fields below belong to
        self.slots = self.keep = None

    def advance(self, seen: int, new: int, device: torch.device) -> None:
        """Plan the step that appends `new` slots after `seen` (once per forward, whichever layer comes first)."""
        if self.step_of == seen:
            return
        if seen != self.seen:
            raise RuntimeError(f"SWA cache layers out of step: a layer has seen {seen} tokens, the plan {self.seen}")
        kept = self.kept if self.kept is not None else torch.empty(0, dtype=torch.long, device=device)
        slots = torch.cat([kept, torch.arange(seen, seen + new, device=device)])  # returned to attention
        pos = self.key_positions()[:, slots]  # (B, kept + new)
        is_sink = ((pos >= 0) & (pos < self.sink)).any(0)
        in_tail = ((pos >= 0) & (pos > pos.amax(1, keepdim=True) - (self.window - 1))).any(0)  # any padding side
        self.keep = (is_sink | in_tail).nonzero().squeeze(1)  # the one host sync of the step
        self.slots, self.kept = slots, slots[self.keep]
        self.step_of, self.seen = seen, seen + new


class SinkWindowLayer(DynamicLayer):
    """Dynamic cache layer that drops keys no future query can see (sink keys and the last W-1 are kept)."""

    is_sliding = True

    def __init__(self, plan: SlotPlan) -> None:
        super().__init__()
        self.plan = plan
        self.seen = 0

    @property
    def returned_slots(self) -> torch.Tensor:
        """Cache slots of the keys returned by the last `update`, in order."""
        return self.plan.slots

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.plan.advance(self.seen, key_states.shape[-2], key_states.device)
        keys = torch.cat([self.keys, key_states], dim=-2)  # (B, H_kv, kept + new, D)
        values = torch.cat([self.values, value_states], dim=-2)
        self.keys, self.values = keys.index_select(-2, self.plan.keep), values.index_select(-2, self.plan.keep)
        self.seen += key_states.shape[-2]
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
