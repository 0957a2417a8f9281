"""apply_swaa / remove_swaa: SWAA through transformers' AttentionInterface, plus per-sequence prompt bookkeeping.

A forward pre-hook on the model records, once per forward, the real-token position of every query and cached key
and each sequence's prompt length P; the registered attention functions read them (no model method is replaced). A
forward hook keeps P with the cache a prefill filled, for the decode steps that continue it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import weakref
from typing import Iterator

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer

from swaa.attention import BACKENDS
from swaa.attention.cudnn import cudnn_ops
from swaa.attention.fa4 import fa4_unavailable
from swaa.attention.inputs import LayerInputs
from swaa.cache import SinkWindowLayer, SlotPlan
from swaa.config import SWAAConfig

log = logging.getLogger(__name__)
# Registered attention names. None may contain "flash": transformers reads such names as hub kernel requests.
IMPLEMENTATIONS = {name: "swaa_varlen" if name == "flash" else f"swaa_{name}" for name in BACKENDS}
SUPPORTED = ("Llama, Qwen2, Qwen3, Qwen3-MoE, Mistral and other decoder-only models that use transformers' "
             "AttentionInterface")


@dataclasses.dataclass
class _Forward:
    """Bookkeeping of one forward call: positions of queries (B, Lq) and of every cache index (B, past + Lq)."""

    q_pos: torch.Tensor
    k_pos: torch.Tensor
    prompt_len: torch.Tensor
    cache: object | None
    memo: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _LayerHandle:
    runtime: "SWAARuntime"
    layer_idx: int


class SWAARuntime:
    """The live SWAA state of one model: config, per-layer kinds, backend, and the current forward's bookkeeping."""

    def __init__(self, model: PreTrainedModel, config: SWAAConfig, backend: str, sliding_cache: bool):
        self.config, self.backend = config, backend
        self.kinds = config.layer_kinds(model.config.num_hidden_layers)
        self.original_impl = model.config._attn_implementation
        self.sliding_cache = sliding_cache and "swa" in self.kinds
        self.active = True
        self.fwd: _Forward | None = None
        self.cache_prompt_len = weakref.WeakKeyDictionary()  # P of each cache's sequences, read when it is continued
        self.forced_prompt_len: torch.Tensor | None = None
        self.signature = inspect.signature(model.forward)
        self.handles = ()

    # -- bookkeeping, once per forward ------------------------------------------------------------------------
    def before_forward(self, module, args, kwargs):
        if not self.active:
            return None
        bound = self.signature.bind_partial(*args, **kwargs).arguments
        extra = bound.get("kwargs", {})
        get = lambda name: bound.get(name, extra.get(name))  # noqa: E731
        tokens = get("input_ids") if get("input_ids") is not None else get("inputs_embeds")
        if tokens is None:
            raise ValueError("SWAA needs input_ids or inputs_embeds")
        batch, q_len = tokens.shape[:2]
        cache = get("cache") if get("cache") is not None else get("past_key_values")
        past = cache.get_seq_length() if cache is not None else 0
        valid = self._valid_keys(get("attention_mask"), batch, past, q_len, tokens.device)
        k_pos = torch.where(valid, valid.cumsum(-1) - 1, -1)  # (B, past + Lq)
        q_pos = k_pos[:, past:]
        prompt_len = self._prompt_len(get("labels"), valid, past, cache)
        if cache is not None and past == 0:
            self._install_cache_layers(cache)
        self.fwd = _Forward(q_pos, k_pos, prompt_len, cache)
        return None

    def after_forward(self, module, args, kwargs, output):
        """Remember P for the cache a forward prefilled (or was given P for), given or made by the model."""
        fwd = self.fwd
        if not self.active or fwd is None:
            return None
        cache = getattr(output, "past_key_values", None)
        cache = fwd.cache if cache is None else cache
        if cache is not None and (fwd.k_pos.shape[1] == fwd.q_pos.shape[1] or self.forced_prompt_len is not None):
            self.cache_prompt_len[cache] = fwd.prompt_len
        return None

    @staticmethod
    def _valid_keys(mask, batch: int, past: int, q_len: int, device) -> torch.Tensor:
        if mask is None:
            return torch.ones(batch, past + q_len, dtype=torch.bool, device=device)
        if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
            raise ValueError("SWAA needs a 2D attention_mask (batch, cached + new tokens) or None, got "
                             f"{getattr(mask, 'shape', type(mask))}")
        if mask.shape != (batch, past + q_len):
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)}; SWAA needs ({batch}, {past + q_len}): "
                             f"one column per cached ({past}) and new ({q_len}) token")
        return mask.to(device=device, dtype=torch.bool)

    def _prompt_len(self, labels, valid, past: int, cache) -> torch.Tensor:
        """P per sequence: from labels (training), a forced value, the prefill (generation), or the cache's prefill."""
        batch = valid.shape[0]
        if labels is not None:
            return valid[:, :past].sum(1) + answer_start(labels, valid[:, past:])
        if self.forced_prompt_len is not None:
            if self.forced_prompt_len.shape != (batch,):
                raise ValueError(f"prompt_lengths: got {list(self.forced_prompt_len.shape)} lengths for a batch of "
                                 f"{batch} sequences; give one length per sequence")
            return self.forced_prompt_len.to(valid.device)
        if past == 0:
            return valid.sum(1)
        prompt_len = self.cache_prompt_len.get(cache)
        if prompt_len is None or prompt_len.shape[0] != batch:
            raise RuntimeError("continuing a KV cache whose prefill SWAA did not see: prefill through the patched "
                               "model, or give the prompt lengths with swaa.prompt_lengths(model, lengths)")
        return prompt_len

    def _install_cache_layers(self, cache) -> None:
        """SWAA's layers in a fresh DynamicCache: sink + window ones for SWA layers with `sliding_cache`, all keys
        elsewhere (also where the model's own config asks for sliding-window layers, which would drop keys)."""
        if type(cache) is not DynamicCache:
            if self.sliding_cache:
                _warn_once(f"SWAA keeps the full KV cache for {type(cache).__name__}; pass a DynamicCache (the "
                           "generate default) for the sink+window cache of SWA layers")
            return
        positions = lambda: self.fwd.k_pos  # noqa: E731  (read at update time: the current forward's positions)
        plan = SlotPlan(self.config.window, self.config.sink, positions)
        cache.layers = [SinkWindowLayer(plan) if kind == "swa" and self.sliding_cache else DynamicLayer()
                        for kind in self.kinds]

    # -- per layer call ------------------------------------------------------------------------------------------
    def layer_inputs(self, layer_idx: int, query: torch.Tensor, key: torch.Tensor) -> LayerInputs:
        fwd = self.fwd
        if fwd is None or fwd.q_pos.shape != (query.shape[0], query.shape[2]):
            raise RuntimeError("SWAA attention ran outside a forward of the model it was applied to (or with other "
                               "shapes); call that model, not one of its submodules")
        layer = fwd.cache.layers[layer_idx] if isinstance(fwd.cache, DynamicCache) else None
        if isinstance(layer, SinkWindowLayer):
            layout = ("sink_window", key.shape[2])
            k_pos = fwd.memo.get(layout)
            if k_pos is None:  # the same slots in every SWA layer of this forward
                k_pos = fwd.memo[layout] = fwd.k_pos[:, layer.returned_slots]
        else:
            k_pos, layout = fwd.k_pos, ("all",)
        if k_pos.shape[1] != key.shape[2]:
            raise RuntimeError(f"layer {layer_idx} got {key.shape[2]} keys but SWAA tracked {k_pos.shape[1]} cache "
                               "positions; static or custom caches are not supported, use DynamicCache")
        return LayerInputs(fwd.q_pos, k_pos, fwd.prompt_len, self.config.window, self.config.sink,
                           self.kinds[layer_idx], layout, fwd.memo)


def _warn_once(message: str) -> None:
    _warn_once_cached(message)


@functools.cache
def _warn_once_cached(message: str) -> None:
    log.warning(message)


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' stays 'auto' on CUDA (the router of swaa/attention/auto.py) and is 'chunked' elsewhere (measured faster
    than 'reference' and than FA on CPU, BENCHMARKS.md)."""
    if backend == "auto":
        choice = "auto" if device.type == "cuda" else "chunked"
        _log_choice_once("fa4 (where flash-attn-4 runs, head dims 64 / 128) or flex for SWA prefill and training, "
                         "flash for full layers and decode" if choice == "auto" else choice,
                         device.type)
        return choice
    if backend not in BACKENDS:
        raise ValueError(f"unknown SWAA backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend in ("flash", "cudnn", "fa4") and device.type != "cuda":
        raise ValueError(f"backend {backend!r} needs a CUDA device, but the model is on {device}; "
                         "use 'flex' or 'reference'")
    if backend == "cudnn":
        cudnn_ops()  # a clear error now, not at the first forward, when nvidia-cudnn-frontend is missing
    if backend == "fa4" and (reason := fa4_unavailable(device.index)) is not None:
        raise ValueError(f"backend 'fa4' cannot run on {device}: {reason}; use 'flex' or 'auto'")
    return backend


def backend_unavailable(name: str, device: torch.device) -> str | None:
    """Why SWAA backend `name` cannot run on `device` (resolve_backend's error), or None when it can."""
    if name == "auto":  # resolve_backend takes it on every device; asking it here would log its choice too early
        return None
    try:
        resolve_backend(name, device)
    except (ValueError, RuntimeError) as e:  # RuntimeError: cudnn_ops without nvidia-cudnn-frontend
        return str(e)
    return None


def available_backends(device: torch.device) -> list[str]:
    """The SWAA backends that can run on `device`, sorted."""
    return sorted(name for name in BACKENDS if backend_unavailable(name, device) is None)


def check_backends(names: list[str], device: torch.device, flag: str) -> None:
    """Before any work: a ValueError naming `flag` and the first of `names` that cannot run on `device`, with the
    backends that can."""
    for name in names:
        if (reason := backend_unavailable(name, device)) is not None:
            raise ValueError(f"{flag} {name}: not available on {device} ({reason}); available on {device}: "
                             f"{available_backends(device)}")


@functools.cache
def _log_choice_once(choice: str, device_type: str) -> None:
    log.info("SWAA backend 'auto' -> %r on %s", choice, device_type)


def attention_layers(model: PreTrainedModel) -> dict[int, torch.nn.Module]:
    """The self-attention module of every decoder layer, by layer index."""
    layers = {}
    for module in model.modules():
        idx = module.__dict__.get("layer_idx")
        if isinstance(idx, int) and type(module).__name__.endswith("Attention"):
            layers.setdefault(idx, module)
    return layers


def apply_swaa(model: PreTrainedModel, config: SWAAConfig | None = None, backend: str = "auto",
               sliding_cache: bool = True) -> PreTrainedModel:
    """Switch `model` (in place) to SWAA attention; config None reads `model.config.swaa` (saved by save_pretrained).

    `sliding_cache` keeps only the sink + window keys of SWA layers without FA decode in generate's DynamicCache.
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"apply_swaa needs a transformers PreTrainedModel, got {type(model).__name__} "
                        "(for a peft model pass model.get_base_model())")
    if "swaa_runtime" in model.__dict__:
        remove_swaa(model)
    if config is None:
        if "swaa" not in model.config.to_dict():
            raise ValueError("no SWAA config given and model.config has no 'swaa' entry")
        config = SWAAConfig.from_dict(model.config.swaa)
    depth = model.config.num_hidden_layers
    config.layer_kinds(depth)  # validates layer indices against the depth
    layers = attention_layers(model)
    if not type(model)._supports_attention_backend or sorted(layers) != list(range(depth)):
        raise ValueError(f"{type(model).__name__} is not supported: SWAA needs {SUPPORTED} "
                         f"(found attention layers {sorted(layers)} for {depth} decoder layers)")
    if config.enabled:
        backend = resolve_backend(backend, model.device)
    model.config.swaa = config.to_dict()
    if not config.enabled:
        return model
    runtime = SWAARuntime(model, config, backend, sliding_cache)
    name = IMPLEMENTATIONS[backend]
    AttentionInterface.register(name, BACKENDS[backend])
    for idx, module in layers.items():
        module.swaa_layer = _LayerHandle(runtime, idx)
    runtime.handles = (model.register_forward_pre_hook(runtime.before_forward, with_kwargs=True),
                       model.register_forward_hook(runtime.after_forward, with_kwargs=True))
    model.swaa_runtime = runtime
    model.set_attn_implementation(name)
    log.info("SWAA %s applied to %s with backend %r (%d full, %d SWA layers)", config.tag, type(model).__name__,
             backend, runtime.kinds.count("full"), depth - runtime.kinds.count("full"))
    return model


def remove_swaa(model: PreTrainedModel) -> PreTrainedModel:
    """Undo apply_swaa: original attention implementation, no hook, no SWAA entry in the config."""
    runtime = model.__dict__.pop("swaa_runtime", None)
    if runtime is not None:
        for handle in runtime.handles:
            handle.remove()
        model.set_attn_implementation(runtime.original_impl)
        for module in attention_layers(model).values():
            module.__dict__.pop("swaa_layer", None)
    model.config.__dict__.pop("swaa", None)
    return model


def _runtime(model: PreTrainedModel) -> SWAARuntime | None:
    return model.__dict__.get("swaa_runtime")


@contextlib.contextmanager
def swaa_disabled(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """Run a block with the model's original full attention (the FA teacher / baseline on the same weights)."""
    runtime = _runtime(model)
    if runtime is None or not runtime.active:
        yield model
        return
    runtime.active = False
    model.set_attn_implementation(runtime.original_impl)
    try:
        yield model
    finally:
        model.set_attn_implementation(IMPLEMENTATIONS[runtime.backend])
        runtime.active = True


def answer_start(labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """P per sequence (B,): the real tokens before its first supervised label (label != -100); all if none."""
    valid = attention_mask.bool()
    supervised = (labels != -100) & valid
    return (valid & (supervised.cumsum(1) == 0)).sum(1)


@contextlib.contextmanager
def prompt_lengths(model: PreTrainedModel, lengths: torch.Tensor | list[int]) -> Iterator[None]:
    """Fix each sequence's prompt length P (real tokens) for a block: chunked prefill, speculative decoding, or a
    loss computed outside the model (swaa.loss). A model without SWAA (no window) has no answer region: no effect."""
    runtime = _runtime(model)
    if runtime is None:
        yield
        return
    runtime.forced_prompt_len = torch.as_tensor(lengths, dtype=torch.long)
    try:
        yield
    finally:
        runtime.forced_prompt_len = None
