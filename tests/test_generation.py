"""Batched greedy generation matches one-by-one generation, and static decode matches generate."""

import pytest
import torch

from conftest import tiny_model
from swaa import SWAAConfig, apply_swaa
from swaa.generation import _left_pad, chat_token_ids, generate_answers, static_greedy

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


@pytest.mark.parametrize("config", [None, SWAAConfig(window=8, sink=2), SWAAConfig(window=8, sink=2, fa_decode=True,
                                                                                   full_layers=[1])],
                         ids=["fa", "swa_ring", "fad_and_full"])
def test_static_decode_gives_the_answers_of_generate(smollm2_tokenizer, config):
    model = tiny_model(vocab_size=len(smollm2_tokenizer), seed=2)
    if config is not None:
        apply_swaa(model, config)
    want = generate_answers(model, smollm2_tokenizer, PROMPTS, max_new_tokens=12, batch_size=5)
    assert generate_answers(model, smollm2_tokenizer, PROMPTS, max_new_tokens=12, batch_size=5, decode="static") == want


def test_static_decode_of_a_peft_model_keeps_its_adapters(smollm2_tokenizer):
    from peft import LoraConfig, get_peft_model
    model = apply_swaa(tiny_model(vocab_size=len(smollm2_tokenizer), seed=4), SWAAConfig(window=8, sink=2))
    before = generate_answers(model, smollm2_tokenizer, PROMPTS, max_new_tokens=8, batch_size=5, decode="static")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5, generator=torch.Generator().manual_seed(0))
    want = generate_answers(peft_model, smollm2_tokenizer, PROMPTS, max_new_tokens=8, batch_size=5)
    assert want != before  # the adapters change the answers
    assert generate_answers(peft_model, smollm2_tokenizer, PROMPTS, max_new_tokens=8, batch_size=5,
                            decode="static") == want


@torch.inference_mode()
def test_static_greedy_stops_and_pads_like_generate(smollm2_tokenizer):
    model = apply_swaa(tiny_model(vocab_size=len(smollm2_tokenizer), seed=3), SWAAConfig(window=8, sink=2))
    ids, mask = _left_pad([chat_token_ids(smollm2_tokenizer, p) for p in PROMPTS], 0, model.device)
    free = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    eos = [int(free[0, ids.shape[1] + 2])]  # row 0 stops at its third new token
    want = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0,
                          eos_token_id=eos)[:, ids.shape[1]:]
    got = static_greedy(model, ids, mask, 10, eos, pad_id=0)
    assert torch.equal(got, want) and (got[0, 3:] == 0).all()


def test_chat_template_is_applied(smollm2_tokenizer):
    ids = chat_token_ids(smollm2_tokenizer, "hello")
    text = smollm2_tokenizer.decode(ids)
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n") and "hello" in text


def test_bad_batch_size(model, smollm2_tokenizer):
    with pytest.raises(ValueError, match="batch_size=0"):
        generate_answers(model, smollm2_tokenizer, PROMPTS, batch_size=0)
    with pytest.raises(ValueError, match="decode='fast'"):
        generate_answers(model, smollm2_tokenizer, PROMPTS, decode="fast")
