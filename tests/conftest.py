"""Shared fixtures: tiny random Llama/Qwen3 models and the SmolLM2 tokenizer (loaded once per session)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from swaa.models import load_tokenizer


def tiny_model(family: str = "llama", vocab_size: int = 128, layers: int = 4, seed: int = 0, **overrides):
    """A randomly initialised float32 causal LM small enough for CPU tests (GQA: 4 query / 2 KV heads)."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  attn_implementation="sdpa")
    common.update(overrides)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=16, **common))
    else:
        raise ValueError(f"unknown family {family!r}")
    return model.eval()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    return load_tokenizer()
