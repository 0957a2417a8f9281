"""What every backend needs for one layer call: positions, prompt lengths, the layer's kind, a per-forward memo."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from swaa.config import LayerKind


@dataclasses.dataclass
class LayerInputs:
    """Positions of the call's queries (B, Lq) and keys (B, Lk), prompt lengths (B,), and this layer's rule."""

    q_pos: torch.Tensor
    k_pos: torch.Tensor
    prompt_len: torch.Tensor
    window: int | None
    sink: int
    kind: LayerKind
    layout: tuple  # identifies the key layout; layers with equal (kind, layout) share masks within a forward
    memo: dict

    def cached(self, name: str, build: Callable[[], Any]) -> Any:
        """Build once per forward for all layers of this kind and key layout (masks, packing plans)."""
        key = (name, self.kind, self.layout)
        if key not in self.memo:
            self.memo[key] = build()
        return self.memo[key]


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd records this call: grad mode on and some input requires gradients."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def layer_inputs(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor) -> LayerInputs:
    """Look up SWAA's bookkeeping for `module` (an attention layer patched by apply_swaa) and check the shapes."""
    handle = module.__dict__.get("swaa_layer")
    if handle is None:
        raise RuntimeError(f"{type(module).__name__} was not prepared by swaa.apply_swaa; call apply_swaa(model) first")
    return handle.runtime.layer_inputs(handle.layer_idx, query, key)
