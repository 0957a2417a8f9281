"""Batched greedy generation of answers to chat prompts (evaluation, validation during training, distillation).

Answers come from `model.generate` (decode="generate") or from StaticDecoder steps (decode="static": one CUDA graph
replay per token on GPU; the same greedy tokens in float32, while in bf16 a near-tie can flip, RESULTS.md).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from swaa.models import forward_with_cache
from swaa.static_decode import StaticDecoder

DECODE_MODES = ("generate", "static")
STOP_CHECK_EVERY = 8  # static decode checks every this many steps whether all rows have stopped (one host sync)


def chat_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Token ids of `prompt` as one user turn, ending with the assistant generation prompt."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T_max), rows right-aligned."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Stop tokens: the model's generation-config EOS ids and the tokenizer's EOS (chat end-of-turn)."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def static_greedy(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                  eos: list[int], pad_id: int) -> torch.Tensor:
    """Greedy new tokens (B, <= max_new_tokens) as `model.generate` gives them (pad after a row's stop token), with a
    prefill through the model and StaticDecoder steps."""
    positions = attention_mask.long().cumsum(-1) - 1  # generate's position ids
    cache = DynamicCache(config=model.config)
    logits = forward_with_cache(model, cache, input_ids=input_ids, attention_mask=attention_mask,
                                position_ids=positions.masked_fill(attention_mask == 0, 1))
    key_positions = positions.masked_fill(attention_mask == 0, -1)
    stop = torch.tensor(eos, device=input_ids.device)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    pos, tokens = positions[:, -1:], []
    with StaticDecoder(model, cache, max_new_tokens, key_positions=key_positions) as decoder:
        for step in range(max_new_tokens):
            token = logits[:, -1].argmax(-1, keepdim=True).masked_fill(done[:, None], pad_id)
            tokens.append(token)
            done |= torch.isin(token[:, 0], stop)
            if step + 1 == max_new_tokens or (step % STOP_CHECK_EVERY == STOP_CHECK_EVERY - 1 and bool(done.all())):
                break
            pos = pos + 1
            logits = decoder.step(token, position_ids=pos)
    return torch.cat(tokens, 1)


@torch.inference_mode()
def generate_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 32,
    batch_size: int = 8,
    progress: bool = False,
    decode: str = "generate",
) -> list[str]:
    """Greedy answers to `prompts` (chat template, left padding), in the order of `prompts`.

    Batches group prompts of similar token length; only the new tokens are decoded, special tokens skipped.
    `decode`: "generate" (transformers) or "static" (StaticDecoder steps; CUDA graphs on GPU).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected an int >= 1")
    if decode not in DECODE_MODES:
        raise ValueError(f"decode={decode!r}: expected one of {DECODE_MODES}")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token before batched generation")
    encoded = [chat_token_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    eos = _eos_ids(model, tokenizer)
    answers: list[str] = [""] * len(prompts)
    for start in tqdm(range(0, len(order), batch_size), desc="generate", disable=not progress, leave=False):
        idx = order[start:start + batch_size]
        input_ids, attention_mask = _left_pad([encoded[i] for i in idx], tokenizer.pad_token_id, model.device)
        if decode == "static":
            new = static_greedy(model, input_ids, attention_mask, max_new_tokens, eos, tokenizer.pad_token_id)
        else:
            new = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
                                 use_cache=True)[:, input_ids.shape[1]:]
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        for i, text in zip(idx, texts):
            answers[i] = text.strip()
    return answers
