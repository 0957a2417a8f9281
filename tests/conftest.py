"""Shared fixtures: tiny random Llama/Qwen3 models, the SmolLM2 tokenizer (loaded once per session), a Ctrl-C
stand-in."""

import pytest

from swaa.models import load_tokenizer
from swaa.tiny import build_tiny_model


def tiny_model(family: str = "llama", vocab_size: int = 128, layers: int = 4, seed: int = 0, **overrides):
    """A randomly initialised float32 causal LM small enough for CPU tests (swaa.tiny's shape, context 4096)."""
    return build_tiny_model(f"tiny:{family}:{layers}:{vocab_size}", seed, **{"max_position_embeddings": 4096,
                                                                            **overrides})


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    return load_tokenizer()


def interrupted_at_call(function, n: int):
    """`function` that raises KeyboardInterrupt (as Ctrl-C does) on its n-th call instead of running; `.calls` counts
    every call."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return function(*args, **kwargs)
    wrapper.calls = calls
    return wrapper
