"""encode_chat label masks, record normalisation and the padding collator."""

import pytest
import torch

from swaa.data.chat import IGNORE_INDEX, PadCollator, encode_chat, normalize_record

CHAT = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2 is 42"}]
# Qwen3-like: only the last assistant turn carries an (empty) reasoning block, so prefixes render differently
THINK_LAST = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' and loop.last %}"
              "<think>\n\n</think>\n\n{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def supervised_runs(tokenizer, enc):
    """Decoded text of each contiguous run of supervised tokens."""
    runs, current = [], []
    for tok, label in zip(enc["input_ids"], enc["labels"]):
        if label != IGNORE_INDEX:
            assert label == tok
            current.append(tok)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    return [tokenizer.decode(r) for r in runs]


def test_single_turn_supervises_answer_and_end_of_turn_only(smollm2_tokenizer):
    tok = smollm2_tokenizer
    enc = encode_chat(tok, CHAT[:2])
    expected_ids = tok(tok.apply_chat_template(CHAT[:2], tokenize=False), add_special_tokens=False)["input_ids"]
    assert enc["input_ids"] == expected_ids
    assert supervised_runs(tok, enc) == ["Hello!<|im_end|>"]
    assert enc["labels"][-1] == IGNORE_INDEX  # the newline after <|im_end|> is template glue, not an answer


def test_multi_turn_supervises_every_assistant_turn(smollm2_tokenizer):
    enc = encode_chat(smollm2_tokenizer, CHAT)
    assert supervised_runs(smollm2_tokenizer, enc) == ["Hello!<|im_end|>", "A2 is 42<|im_end|>"]


def test_sharegpt_record_encodes_like_role_content(smollm2_tokenizer):
    record = {"conversations": [{"from": "human", "value": "Hi there"}, {"from": "gpt", "value": "Hello!"}]}
    messages = normalize_record(record, "x.jsonl")
    assert messages == CHAT[:2]
    assert encode_chat(smollm2_tokenizer, messages) == encode_chat(smollm2_tokenizer, CHAT[:2])


def test_no_assistant_turn_means_no_label(smollm2_tokenizer):
    enc = encode_chat(smollm2_tokenizer, CHAT[:1])
    assert set(enc["labels"]) == {IGNORE_INDEX}


def test_max_length_truncates_from_the_right(smollm2_tokenizer):
    full, cut = encode_chat(smollm2_tokenizer, CHAT), encode_chat(smollm2_tokenizer, CHAT, max_length=10)
    assert cut == {"input_ids": full["input_ids"][:10], "labels": full["labels"][:10]}


def test_template_that_renders_earlier_turns_differently(smollm2_tokenizer, monkeypatch):
    monkeypatch.setattr(smollm2_tokenizer, "chat_template", THINK_LAST)
    enc = encode_chat(smollm2_tokenizer, CHAT)
    assert supervised_runs(smollm2_tokenizer, enc) == ["Hello!<|im_end|>",
                                                       "<think>\n\n</think>\n\nA2 is 42<|im_end|>"]


def test_normalize_formats():
    pair = [{"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]
    assert normalize_record({"prompt": "p", "response": "r"}, "f") == pair
    assert normalize_record({"instruction": "p", "output": "r"}, "f") == pair
    assert normalize_record({"instruction": "p", "input": "", "output": "r"}, "f") == pair
    assert normalize_record({"instruction": "do", "input": "x", "output": "r"}, "f")[0]["content"] == "do\n\nx"
    assert normalize_record({"messages": pair}, "f") == pair
    mixed = {"conversations": [{"role": None, "content": None, "from": "human", "value": "p"},
                               {"role": "assistant", "content": "r", "from": None, "value": None}]}
    assert normalize_record(mixed, "f") == pair  # columnar files fill the other style's fields with None
    system = {"conversations": [{"from": "system", "value": "s"}] + [{"from": "human", "value": "p"}]}
    assert [m["role"] for m in normalize_record(system, "f")] == ["system", "user"]


def test_normalize_errors_name_the_source_and_fields():
    with pytest.raises(ValueError, match=r"data/a\.jsonl: record has fields \['prompt', 'text'\]"):
        normalize_record({"prompt": "p", "text": "t", "response": None}, "data/a.jsonl")
    with pytest.raises(ValueError, match=r"b\.parquet: conversation turn .* role 'robot'"):
        normalize_record({"conversations": [{"role": "robot", "content": "x"}]}, "b.parquet")
    with pytest.raises(ValueError, match="non-empty list"):
        normalize_record({"conversations": []}, "c.json")


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_collator(side):
    batch = PadCollator(pad_token_id=7, padding_side=side)([
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}])
    pad = [7, 7]
    row = [4] + pad if side == "right" else pad + [4]
    assert batch["input_ids"].tolist() == [[1, 2, 3], row]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0] if side == "right" else [0, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100] if side == "right" else [-100, -100, 4]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_pad_collator_rejects_unknown_side():
    with pytest.raises(ValueError, match="padding_side='middle'"):
        PadCollator(0, padding_side="middle")
