"""Decode on fixed-size KV buffers, replayed as one CUDA graph per token: no Python or kernel-launch cost per step.

Built from a prefilled DynamicCache. SWA layers on the sink+window cache get their sink slots plus a ring of W slots
(memory constant in the context); every other layer gets a buffer of its cache plus `max_new_tokens`. A step writes
the new key into its slot and attends over the whole buffer under swaa.masks.visible, so no shape ever changes.
Full and FA-decode layers over an unpadded prefill split that: one unmasked FlashAttention call over the prefill's
keys (which every new token sees), merged by log-sum-exp with the few masked new slots.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from swaa.cache import SinkWindowLayer
from swaa.integration import attention_layers
from swaa.masks import visible
from swaa.models import base_model, forward_with_cache

log = logging.getLogger(__name__)
IMPLEMENTATION = "swaa_static"  # the attention implementation while a StaticDecoder is open


@dataclasses.dataclass
class _Slots:
    """One buffer layout shared by a group of layers: the real position held by each slot, and the next write."""

    pos: torch.Tensor  # (B, C) long, -1 for empty slots
    write: torch.Tensor  # (1,) long: the slot of the next key
    ring: tuple[int, int] | None  # (first slot, size) of the ring that wraps around; None: the buffer only grows

    def advance(self) -> None:
        if self.ring is None:
            self.write.add_(1)
        else:
            start, size = self.ring
            self.write.copy_(start + (self.write - start + 1) % size)


@dataclasses.dataclass
class _Layer:
    keys: torch.Tensor  # (B, H_kv, C, D)
    values: torch.Tensor
    slots: _Slots


class _StaticCache:
    """The cache the model's attention layers call: `update` writes the step's key and value, returns the buffers."""

    def __init__(self, layers: list[_Layer]) -> None:
        self.layers = layers

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        layer = self.layers[layer_idx]
        layer.keys.index_copy_(2, layer.slots.write, key_states)
        layer.values.index_copy_(2, layer.slots.write, value_states)
        return layer.keys, layer.values

    def get_seq_length(self, *args, **kwargs) -> int:
        raise NotImplementedError("a StaticDecoder passes position_ids each step; its cache has no host-side length")


@dataclasses.dataclass(frozen=True)
class _Handle:
    decoder: "StaticDecoder"
    layer_idx: int


def attention_with_lse(q, k, v, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked attention (B, H, Lq, D) and its log-sum-exp (B, H, Lq): FlashAttention on CUDA in half precision."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
        return out, lse
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(scores, -1), v.float()), scores.logsumexp(-1)


def prefix_and_new_attention(q, key, value, prefix: int, new_mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention over slots [0, prefix), all visible, merged with the slots after it under `new_mask` (B, 1, 1, n)."""
    out_prefix, lse_prefix = attention_with_lse(q, key[:, :, :prefix], value[:, :, :prefix], scale)
    scores = torch.matmul(q.float(), key[:, :, prefix:].float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(~new_mask, float("-inf"))  # the step's own key is always visible: finite lse
    lse_new = scores.logsumexp(-1)
    out_new = torch.matmul(torch.softmax(scores, -1), value[:, :, prefix:].float())
    top = torch.maximum(lse_prefix, lse_new)
    w_prefix, w_new = (lse_prefix - top).exp()[..., None], (lse_new - top).exp()[..., None]
    return ((out_prefix.float() * w_prefix + out_new * w_new) / (w_prefix + w_new)).to(q.dtype)


def static_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """One query per sequence over the layer's whole buffer, masked by the decoder's visibility mask of this step."""
    handle = module.__dict__["swaa_static"]
    decoder, idx = handle.decoder, handle.layer_idx
    mask = decoder.masks[idx]  # (B, 1, 1, C)
    b, hq, lq, d = query.shape
    hkv = key.shape[1]
    q = query.reshape(b, hkv, hq // hkv * lq, d)  # the query heads sharing a KV head become its rows (lq == 1)
    scale = d ** -0.5 if scaling is None else scaling
    prefix = decoder.visible_prefix[idx]
    if prefix:
        out = prefix_and_new_attention(q, key, value, prefix, mask[..., prefix:], scale)
    else:
        out = F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scale)
    return out.reshape(b, hq, lq, d).transpose(1, 2).contiguous(), None


AttentionInterface.register(IMPLEMENTATION, static_attention)


class StaticDecoder:
    """One-token decode steps of a prefilled batch on fixed buffers; on CUDA each step is one CUDA graph replay.

    Use as a context manager: while open, the model runs only through `step`. The prefilled cache is consumed.
    A peft model is decoded through its base model, whose layers carry the adapters.
    """

    def __init__(self, model: PreTrainedModel, cache: DynamicCache, max_new_tokens: int, graph: bool | None = None,
                 key_positions: torch.Tensor | None = None) -> None:
        """`key_positions` (B, cached) are the real positions of a model without SWAA (default: no padding)."""
        if not isinstance(cache, DynamicCache) or not cache.layers or cache.get_seq_length() == 0:
            raise ValueError("StaticDecoder needs the DynamicCache of a prefill through the same model")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: expected >= 1")
        model = base_model(model)
        self.model, self.max_new_tokens, self.steps = model, max_new_tokens, 0
        self.runtime = model.__dict__.get("swaa_runtime")
        depth = model.config.num_hidden_layers
        seen = cache.get_seq_length()
        first = cache.layers[0].keys
        device, batch = first.device, first.shape[0]
        if self.runtime is not None:
            if self.runtime.fwd is None or self.runtime.fwd.k_pos.shape != (batch, seen):
                raise ValueError("StaticDecoder: the cache was not prefilled through this SWAA model")
            self.kinds, cfg = self.runtime.kinds, self.runtime.config
            self.window, self.sink = cfg.window, cfg.sink
            k_pos, self.prompt_len = self.runtime.fwd.k_pos, self.runtime.fwd.prompt_len
        else:
            self.kinds, self.window, self.sink = ["full"] * depth, None, 0
            k_pos = key_positions if key_positions is not None else torch.arange(seen, device=device).expand(batch, -1)
            self.prompt_len = torch.zeros(batch, dtype=torch.long, device=device)
        self.q_pos = (k_pos >= 0).sum(1, keepdim=True)  # (B, 1): real position of the next token
        if any(isinstance(layer, SinkWindowLayer) for layer in cache.layers) and bool((self.q_pos < self.sink).any()):
            raise ValueError(f"StaticDecoder needs prompts of at least sink={self.sink} real tokens, got "
                             f"{self.q_pos.squeeze(1).tolist()}")
        self.hf_pos = torch.full((batch, 1), seen, dtype=torch.long, device=device)  # transformers' position_ids
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.layers = self._build_layers(cache, k_pos, seen)
        # slots every new token sees in full layers, and in FA-decode layers once past the prompt, on a growing
        # buffer without padding (0: mask the whole buffer)
        unpadded = bool((k_pos >= 0).all())
        answering = bool((self.q_pos >= self.prompt_len[:, None]).all())
        split = {"full": unpadded, "swa_fa_decode": unpadded and answering, "swa": False}
        self.visible_prefix = [seen if layer.slots.ring is None and split[kind] else 0
                               for layer, kind in zip(self.layers, self.kinds)]
        self.cache = _StaticCache(self.layers)
        self.families = list({id(layer.slots): layer.slots for layer in self.layers}.values())
        self.graph = torch.cuda.CUDAGraph() if (device.type == "cuda" if graph is None else graph) else None
        self.captured = False
        self.masks: list[torch.Tensor] = []
        self.logits: torch.Tensor | None = None
        self._saved_impl = None

    # -- buffers -------------------------------------------------------------------------------------------------
    def _build_layers(self, cache: DynamicCache, k_pos: torch.Tensor, seen: int) -> list[_Layer]:
        ring = grow = None
        layers = []
        for i, old in enumerate(cache.layers):
            if isinstance(old, SinkWindowLayer):
                ring = ring or self._ring_slots(old, k_pos)
                layers.append(self._ring_layer(old, ring))
            else:
                grow = grow or self._grow_slots(k_pos, seen)
                layers.append(self._grow_layer(old, grow))
            cache.layers[i] = DynamicLayer()  # consumed: memory is not held twice
        return layers

    def _ring_slots(self, layer: SinkWindowLayer, k_pos: torch.Tensor) -> tuple[_Slots, torch.Tensor, torch.Tensor]:
        """Sink slots (a sink for any row) stay fixed; the other kept slots start a ring of W slots."""
        pos = k_pos[:, layer.plan.kept]  # (B, kept)
        is_sink = ((pos >= 0) & (pos < self.sink)).any(0)
        fixed, rest = is_sink.nonzero().squeeze(1), (~is_sink).nonzero().squeeze(1)
        n_fixed, n_rest = len(fixed), len(rest)
        slot_pos = torch.full((pos.shape[0], n_fixed + self.window), -1, dtype=torch.long, device=pos.device)
        slot_pos[:, :n_fixed], slot_pos[:, n_fixed:n_fixed + n_rest] = pos[:, fixed], pos[:, rest]
        write = torch.tensor([n_fixed + n_rest % self.window], device=pos.device)
        return _Slots(slot_pos, write, (n_fixed, self.window)), fixed, rest

    def _ring_layer(self, old: SinkWindowLayer, ring: tuple[_Slots, torch.Tensor, torch.Tensor]) -> _Layer:
        slots, fixed, rest = ring
        keys, values = (t.new_zeros(*t.shape[:2], slots.pos.shape[1], t.shape[3]) for t in (old.keys, old.values))
        for new, src in ((keys, old.keys), (values, old.values)):
            new[:, :, :len(fixed)] = src[:, :, fixed]
            new[:, :, len(fixed):len(fixed) + len(rest)] = src[:, :, rest]
        return _Layer(keys, values, slots)

    def _grow_slots(self, k_pos: torch.Tensor, seen: int) -> _Slots:
        pos = torch.full((k_pos.shape[0], seen + self.max_new_tokens), -1, dtype=torch.long, device=k_pos.device)
        pos[:, :seen] = k_pos
        return _Slots(pos, torch.tensor([seen], device=k_pos.device), None)

    def _grow_layer(self, old: DynamicLayer, slots: _Slots) -> _Layer:
        keys, values = (t.new_zeros(*t.shape[:2], slots.pos.shape[1], t.shape[3]) for t in (old.keys, old.values))
        keys[:, :, :old.keys.shape[2]], values[:, :, :old.values.shape[2]] = old.keys, old.values
        return _Layer(keys, values, slots)

    # -- one step --------------------------------------------------------------------------------------------------
    def _body(self) -> torch.Tensor:
        """The step as device work only (this is what the graph records): slots, masks, forward, advance."""
        for slots in self.families:
            slots.pos.index_copy_(1, slots.write, self.q_pos)
        masks = {}
        for layer, kind in zip(self.layers, self.kinds):
            key = (id(layer.slots), kind)
            if key not in masks:
                masks[key] = visible(self.q_pos[:, None, :, None], layer.slots.pos[:, None, None, :],
                                     self.prompt_len[:, None, None, None], self.window, self.sink, kind)
        self.masks = [masks[(id(layer.slots), kind)] for layer, kind in zip(self.layers, self.kinds)]
        logits = forward_with_cache(self.model, self.cache, input_ids=self.ids, position_ids=self.hf_pos)
        for slots in self.families:
            slots.advance()
        self.q_pos.add_(1)
        self.hf_pos.add_(1)
        return logits

    def _state(self) -> list[torch.Tensor]:
        return [self.q_pos, self.hf_pos, *(t for s in self.families for t in (s.pos, s.write))]

    def _capture(self) -> None:
        """Warm up on a side stream, then record one step; the state is restored after each (nothing advances)."""
        saved = [t.clone() for t in self._state()]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._body()  # writes the next slot, which the real step overwrites
            for t, s in zip(self._state(), saved):
                t.copy_(s)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(self.graph):
            self.logits = self._body()
        for t, s in zip(self._state(), saved):
            t.copy_(s)
        self.captured = True

    def step(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, 1, V) of the next token after `input_ids` (B, 1); valid until the next step (clone to keep).

        `position_ids` (B, 1), as transformers takes them; default: the cache index, transformers' default.
        """
        if self._saved_impl is None:
            raise RuntimeError("StaticDecoder.step runs inside `with StaticDecoder(...) as decoder:`")
        if input_ids.shape != self.ids.shape:
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}; expected {tuple(self.ids.shape)}")
        if self.steps >= self.max_new_tokens:
            raise RuntimeError(f"StaticDecoder was built for max_new_tokens={self.max_new_tokens} steps")
        self.ids.copy_(input_ids)
        if position_ids is not None:
            self.hf_pos.copy_(position_ids)
        with torch.no_grad():
            if self.graph is None:
                self.logits = self._body()
            else:
                if not self.captured:
                    self._capture()
                self.graph.replay()
        self.steps += 1
        return self.logits

    def greedy(self, logits: torch.Tensor, steps: int) -> torch.Tensor:
        """`steps` greedy steps from the last position of `logits`; the last step's logits."""
        for _ in range(steps):
            logits = self.step(logits[:, -1].argmax(-1, keepdim=True))
        return logits

    # -- model state while open ------------------------------------------------------------------------------------
    def __enter__(self) -> "StaticDecoder":
        if self.steps or self._saved_impl is not None:
            raise RuntimeError("a StaticDecoder is opened once; build a new one from a new prefill")
        self._saved_impl = self.model.config._attn_implementation
        for idx, module in attention_layers(self.model).items():
            module.swaa_static = _Handle(self, idx)
        if self.runtime is not None:
            self.runtime.active = False
        self.model.set_attn_implementation(IMPLEMENTATION)
        return self

    def __exit__(self, *exc) -> None:
        self.model.set_attn_implementation(self._saved_impl)
        if self.runtime is not None:
            self.runtime.active = True
        for module in attention_layers(self.model).values():
            module.__dict__.pop("swaa_static", None)
        self._saved_impl = None
        self.graph = None
