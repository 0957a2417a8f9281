"""Batched greedy generation matches one-by-one generation; speed measurement returns sane numbers."""

import pytest

from conftest import tiny_model
from swaa import SWAAConfig, apply_swaa
from swaa.eval.generate import chat_token_ids, generate_answers, measure_speed

PROMPTS = ["hi", "What is the pass key? " * 6, "a b c d e f g h " * 12, "x", "Tell me a story about a cat."]


@pytest.fixture(scope="module")
def model(smollm2_tokenizer):
    return tiny_model(vocab_size=len(smollm2_tokenizer))


def test_batched_equals_unbatched(model, smollm2_tokenizer):
    batched = generate_answers(model, smollm2_tokenizer, PROMPTS, max_new_tokens=8, batch_size=3)
    single = [generate_answers(model, smollm2_tokenizer, [p], max_new_tokens=8, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    assert len(set(batched)) > 1  # outputs depend on the prompt
    assert all(a and "pass key" not in a and "<|im_start|>" not in a for a in batched)  # new tokens only


def test_batched_equals_unbatched_under_swaa(smollm2_tokenizer):
    model = apply_swaa(tiny_model(vocab_size=len(smollm2_tokenizer), seed=1),
                       SWAAConfig(window=16, sink=2, fa_decode=True))
    batched = generate_answers(model, smollm2_tokenizer, PROMPTS, max_new_tokens=6, batch_size=5)
    single = [generate_answers(model, smollm2_tokenizer, [p], max_new_tokens=6)[0] for p in PROMPTS]
    assert batched == single


def test_chat_template_is_applied(smollm2_tokenizer):
    ids = chat_token_ids(smollm2_tokenizer, "hello")
    text = smollm2_tokenizer.decode(ids)
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n") and "hello" in text


def test_bad_batch_size(model, smollm2_tokenizer):
    with pytest.raises(ValueError, match="batch_size=0"):
        generate_answers(model, smollm2_tokenizer, PROMPTS, batch_size=0)


def test_measure_speed(model):
    speed = measure_speed(model, None, length=64, new_tokens=4, repeats=2)
    assert set(speed) == {"prefill_ms", "decode_ms_per_token"}
    assert speed["prefill_ms"] > 0 and speed["decode_ms_per_token"] > 0
    with pytest.raises(ValueError, match="length=0"):
        measure_speed(model, None, length=0)
