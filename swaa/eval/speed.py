"""Batch-1 prefill and decode timing of a model as configured, on a random prompt (evaluate.py --speed).

Every figure is one interval of a monotonic clock, never a difference of two runs, so none can be negative.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from swaa.generation import DECODE_MODES
from swaa.models import forward_with_cache
from swaa.static_decode import StaticDecoder
from swaa.timing import timed_ms


class _TokenClock(StoppingCriteria):
    """A stopping criterion that never stops: it stamps the moment each new token is chosen (CUDA events on GPU)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.stamps: list[float | torch.cuda.Event] = []
        self.stamp()  # the start, before prefill

    def stamp(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.stamps.append(event)
        else:
            self.stamps.append(time.perf_counter())

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        self.stamp()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def elapsed_ms(self) -> list[float]:
        """Milliseconds from the start to each stamp after it, non-decreasing (one monotonic clock)."""
        if self.cuda:
            torch.cuda.synchronize()
            return [self.stamps[0].elapsed_time(e) for e in self.stamps[1:]]
        return [(t - self.stamps[0]) * 1e3 for t in self.stamps[1:]]


def generate_token_ms(model: PreTrainedModel, input_ids: torch.Tensor, new_tokens: int) -> list[float]:
    """Milliseconds from the start of one greedy `model.generate` call to each of its `new_tokens` tokens."""
    clock = _TokenClock(model.device)
    model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, use_cache=True,  # no padding
                   stopping_criteria=StoppingCriteriaList([clock]))
    return clock.elapsed_ms()


def _generate_speed(model: PreTrainedModel, input_ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(prefill ms, decode ms per token) of one generate call: the time to its first token, then the time from the
    first token to the last over the `new_tokens` tokens after it."""
    ms = generate_token_ms(model, input_ids, 1 + new_tokens)
    return ms[0], (ms[-1] - ms[0]) / new_tokens


def _static_speed(model: PreTrainedModel, input_ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """(prefill ms, decode ms per token) of one forward over the prompt, then `new_tokens` greedy StaticDecoder steps
    timed after the first (which captures the CUDA graph)."""
    cache = DynamicCache(config=model.config)
    prefill, logits = timed_ms(lambda: forward_with_cache(model, cache, input_ids=input_ids), model.device)
    with StaticDecoder(model, cache, new_tokens + 1) as decoder:
        logits = decoder.greedy(logits, 1)
        decode = timed_ms(lambda: decoder.greedy(logits, new_tokens), model.device)[0] / new_tokens
    return prefill, decode


def speed_setup(decode: str, device: torch.device | str, dtype: torch.dtype) -> dict[str, str]:
    """The settings a timing depends on besides the prompt, as stored beside it: decode mode, device (the GPU's name on
    CUDA) and dtype."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"decode": decode, "device": name, "dtype": str(dtype).removeprefix("torch.")}


@torch.inference_mode()
def measure_speed(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    length: int,
    new_tokens: int = 32,
    repeats: int = 3,
    seed: int = 0,
    decode: str = "generate",
) -> dict[str, float | str]:
    """Batch-1 timing on a random `length`-token prompt, after one warm-up: median prefill ms, decode ms/token, and
    the `speed_setup` they were measured under.

    decode="generate": prefill is the time to generate's first token (SWA prefill), decode the time per token of the
    `new_tokens` after it, in the same call. decode="static": prefill is one forward, decode the StaticDecoder steps
    (CUDA graph replays on GPU).
    """
    if length < 1 or new_tokens < 1 or repeats < 1:
        raise ValueError(f"measure_speed: length={length}, new_tokens={new_tokens}, repeats={repeats} must be >= 1")
    if decode not in DECODE_MODES:
        raise ValueError(f"decode={decode!r}: expected one of {DECODE_MODES}")
    vocab = len(tokenizer) if tokenizer is not None else model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (1, length), generator=gen).to(model.device)
    timed = _static_speed if decode == "static" else _generate_speed
    times = [timed(model, input_ids, new_tokens) for _ in range(1 + repeats)][1:]  # the first is a warm-up
    return {"prefill_ms": statistics.median(t[0] for t in times),
            "decode_ms_per_token": statistics.median(t[1] for t in times),
            **speed_setup(decode, model.device, model.dtype)}
