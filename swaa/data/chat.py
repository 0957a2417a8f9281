"""Chat records -> token ids with labels on assistant turns only, and the padding collator.

Assistant spans are found by rendering prefixes of the conversation with the tokenizer's own chat template.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
RECORD_FORMATS = ("'conversations' (or 'messages'): [{role|from, content|value}], 'prompt' + 'response', "
                  "or 'instruction' (+ 'input') + 'output'")


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict], full: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of each assistant turn in `full`: content + end-of-turn, header excluded."""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = _render(tokenizer, messages[:i], generation_prompt=True)
        if not full.startswith(head):
            raise ValueError(f"chat template of {tokenizer.name_or_path!r} is not prefix-consistent: rendering the "
                             f"first {i} messages with a generation prompt is not a prefix of the whole conversation")
        # the turn as rendered when it is last: content, end-of-turn token, then whitespace we do not supervise
        body = _render(tokenizer, messages[: i + 1])[len(head):].rstrip()
        if full.startswith(body, len(head)):
            spans.append((len(head), len(head) + len(body)))
            continue
        # templates that render earlier turns differently (e.g. Qwen3 drops their reasoning): match the turn's end
        content = message["content"].strip()
        tail = body[body.rfind(content):] if content in body else ""
        end = full.find(tail, len(head)) if tail else -1
        if end < 0:
            raise ValueError(f"cannot locate assistant turn {i} in the conversation rendered by the chat template "
                             f"of {tokenizer.name_or_path!r}")
        spans.append((len(head), end + len(tail)))
    return spans


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_length: int | None = None) -> dict:
    """Token ids of `messages` under the chat template; labels are -100 except on assistant content + end-of-turn.

    A token is supervised when it starts inside an assistant span. `max_length` truncates from the right.
    """
    full = _render(tokenizer, messages)
    spans = _assistant_spans(tokenizer, messages, full)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(enc["input_ids"])
    starts = np.array([start for start, _ in enc["offset_mapping"]], dtype=np.int64).reshape(-1, 1)
    bounds = np.array(spans, dtype=np.int64).reshape(1, -1, 2)
    supervised = ((starts >= bounds[..., 0]) & (starts < bounds[..., 1])).any(axis=1)
    labels = np.where(supervised, input_ids, IGNORE_INDEX).tolist()
    if max_length is not None:
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def _first(record: dict, *fields: str) -> Any:
    """The first of `fields` that is present and not None (columnar files fill absent fields with None)."""
    return next((record[f] for f in fields if record.get(f) is not None), None)


def _message(turn: Any, source: str) -> dict:
    if not isinstance(turn, dict):
        raise ValueError(f"{source}: a conversation turn must be a mapping, got {turn!r}")
    role, content = _first(turn, "role", "from"), _first(turn, "content", "value")
    if role not in ROLES or not isinstance(content, str):
        raise ValueError(f"{source}: conversation turn with fields {record_fields(turn)} and role {role!r}: expected "
                         f"'role' or 'from' in {sorted(ROLES)} and a string 'content' or 'value'")
    return {"role": ROLES[role], "content": content}


def record_fields(record: dict) -> list[str]:
    """The fields a record actually has (not None)."""
    return sorted(k for k, v in record.items() if v is not None)


def normalize_record(record: dict, source: str) -> list[dict]:
    """Messages [{role, content}] of one SFT record in any supported format; `source` names the file in errors."""
    turns = _first(record, "conversations", "messages")
    if turns is not None:
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"{source}: 'conversations' must be a non-empty list of turns, got {turns!r}")
        return [_message(turn, source) for turn in turns]
    if record.get("prompt") is not None and record.get("response") is not None:
        return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
    if record.get("instruction") is not None and record.get("output") is not None:
        prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    raise ValueError(f"{source}: record has fields {record_fields(record)}; expected {RECORD_FORMATS}")


class PadCollator:
    """Pads `input_ids` / `labels` lists into tensors `input_ids`, `attention_mask`, `labels` (labels with -100)."""

    def __init__(self, pad_token_id: int, padding_side: str = "right") -> None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={padding_side!r}: expected 'left' or 'right'")
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side

    def _pad(self, seq: list[int], n: int, value: int) -> list[int]:
        fill = [value] * (n - len(seq))
        return fill + list(seq) if self.padding_side == "left" else list(seq) + fill

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        n = max(len(f["input_ids"]) for f in features)
        return {
            "input_ids": torch.tensor([self._pad(f["input_ids"], n, self.pad_token_id) for f in features]),
            "attention_mask": torch.tensor([self._pad([1] * len(f["input_ids"]), n, 0) for f in features]),
            "labels": torch.tensor([self._pad(f["labels"], n, IGNORE_INDEX) for f in features]),
        }
