"""Tiny randomly initialised Llama / Qwen3 models from a `tiny:<family>:<layers>:<vocab>` spec (smoke runs, tests)."""

from __future__ import annotations

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel, Qwen3Config,
                          Qwen3ForCausalLM)

FAMILIES = {"llama": (LlamaConfig, LlamaForCausalLM, {}), "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 16})}
SPEC_HELP = "'tiny:<family>:<layers>:<vocab>' with family in " + str(sorted(FAMILIES)) + ", e.g. 'tiny:llama:2:49152'"


def is_tiny_spec(spec: str | None) -> bool:
    return isinstance(spec, str) and spec.startswith("tiny:")


def parse_tiny_spec(spec: str, where: str = "model") -> tuple[str, int, int]:
    """(family, layers, vocab_size) from a spec; malformed specs raise with the expected form, naming `where` (the
    field or flag that gave the spec)."""
    parts = spec.split(":")
    if len(parts) != 4 or parts[1] not in FAMILIES or not parts[2].isdigit() or not parts[3].isdigit():
        raise ValueError(f"{where}={spec!r}: expected {SPEC_HELP}")
    layers, vocab = int(parts[2]), int(parts[3])
    if layers < 1 or vocab < 2:
        raise ValueError(f"{where}={spec!r}: need layers >= 1 and vocab >= 2")
    return parts[1], layers, vocab


def tiny_config(spec: str, where: str = "model", **overrides) -> PretrainedConfig:
    """The config of a spec: hidden 64, 4 query / 2 KV heads, context 8192; `overrides` replace fields; errors name
    `where`."""
    family, layers, vocab = parse_tiny_spec(spec, where)
    config_cls, _, extra = FAMILIES[family]
    fields = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                  attn_implementation="sdpa", **extra)
    return config_cls(**{**fields, **overrides})


def build_tiny_model(spec: str, seed: int = 0, where: str = "model", **overrides) -> PreTrainedModel:
    """A CPU model of `tiny_config(spec, **overrides)` in the default dtype; its weights depend on `seed` only; errors
    name `where`."""
    family = parse_tiny_spec(spec, where)[0]
    config = tiny_config(spec, **overrides)
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.manual_seed(seed)
        model = FAMILIES[family][1](config)
    return model.eval()
