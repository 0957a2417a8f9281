"""StaticDecoder (fixed KV buffers, CUDA graphs on GPU) against the dynamic-cache decode, step by step, on CPU."""

import warnings

import pytest
import torch
from transformers import DynamicCache

from conftest import tiny_model
from swaa import SWAAConfig, apply_swaa, prompt_lengths
from swaa.models import cache_argument, forward_with_cache
from swaa.static_decode import IMPLEMENTATION, StaticDecoder, prefix_and_new_attention
from test_integration import batch

NEW = 14  # decode steps: more than W, so the ring of the SWA layers wraps around


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def prefill(model, ids, mask):
    cache = DynamicCache(config=model.config)
    logits = forward_with_cache(model, cache, input_ids=ids, attention_mask=mask)
    return cache, logits


def dynamic_decode(model, ids, mask, steps):
    """Greedy tokens and logits of `steps` one-token forwards on the DynamicCache (the path generate takes)."""
    cache, logits = prefill(model, ids, mask)
    pos = mask.sum(1, keepdim=True) - 1
    tokens, out = [], []
    for _ in range(steps):
        tok = logits[:, -1].argmax(-1, keepdim=True)
        mask, pos = torch.cat([mask, torch.ones_like(tok)], 1), pos + 1
        logits = forward_with_cache(model, cache, input_ids=tok, attention_mask=mask, position_ids=pos)
        tokens.append(tok)
        out.append(logits)
    return torch.cat(tokens, 1), torch.cat(out, 1)


def static_decode(model, ids, mask, steps, **kwargs):
    cache, logits = prefill(model, ids, mask)
    pos = mask.sum(1, keepdim=True) - 1
    tokens, out = [], []
    with StaticDecoder(model, cache, max_new_tokens=steps, **kwargs) as decoder:
        for _ in range(steps):
            tok = logits[:, -1].argmax(-1, keepdim=True)
            pos = pos + 1
            logits = decoder.step(tok, position_ids=pos).clone()
            tokens.append(tok)
            out.append(logits)
    return torch.cat(tokens, 1), torch.cat(out, 1)


CASES = {
    "swa_sink_window_cache": (SWAAConfig(window=5, sink=2), True),
    "fad_and_full_layers": (SWAAConfig(window=6, sink=2, fa_decode=[0, 2], full_layers=[1]), True),
    "swa_full_cache": (SWAAConfig(window=5, sink=2), False),
    "swa_fa_decode_all": (SWAAConfig(window=4, sink=1, fa_decode=True), True),
}


@pytest.mark.parametrize("lengths", [(20, 33), (33, 33)], ids=["padded", "unpadded"])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_static_decode_equals_dynamic_decode(family, case, lengths):
    """Padded batches mask whole buffers; unpadded ones split full and FA-decode layers into prefix + new slots."""
    cfg, sliding = CASES[case]
    model = apply_swaa(tiny_model(family), cfg, backend="reference", sliding_cache=sliding)
    ids, mask = batch(lengths)
    want_tokens, want = dynamic_decode(model, ids, mask, NEW)
    tokens, got = static_decode(model, ids, mask, NEW)
    assert torch.equal(tokens, want_tokens)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_forced_prompt_longer_than_the_prefill():
    """With prompt_lengths beyond the prefill, the first steps are still SWA prompt rows in FA-decode layers."""
    model = apply_swaa(tiny_model("qwen3"), SWAAConfig(window=4, sink=1, fa_decode=True), backend="reference")
    ids, mask = batch((33,))
    with prompt_lengths(model, [38]):
        want_tokens, want = dynamic_decode(model, ids, mask, NEW)
        tokens, got = static_decode(model, ids, mask, NEW)
    assert torch.equal(tokens, want_tokens) and torch.allclose(got, want, atol=1e-4)


def test_static_decode_of_a_model_without_swaa():
    model = tiny_model("qwen3")
    ids, mask = batch((30,))
    want_tokens, want = dynamic_decode(model, ids, mask, NEW)
    tokens, got = static_decode(model, ids, mask, NEW)
    assert torch.equal(tokens, want_tokens) and torch.allclose(got, want, atol=1e-4)


def test_ring_buffer_is_constant_and_model_is_restored():
    model = apply_swaa(tiny_model("llama"), SWAAConfig(window=5, sink=2), backend="reference")
    sizes = []
    for length in (20, 60):
        ids, mask = batch((length,))
        cache, _ = prefill(model, ids, mask)
        with StaticDecoder(model, cache, max_new_tokens=3) as decoder:
            assert model.config._attn_implementation == IMPLEMENTATION
            sizes.append({layer.keys.shape[2] for layer in decoder.layers})
            assert all(layer.get_seq_length() == 0 for layer in cache.layers)  # consumed
            for _ in range(3):
                decoder.step(ids[:, -1:])
            with pytest.raises(RuntimeError, match="max_new_tokens=3"):
                decoder.step(ids[:, -1:])
        assert model.config._attn_implementation == "swaa_reference"
    assert sizes == [{2 + 5}, {2 + 5}]  # S sink slots + a ring of W
    ids, mask = batch((20,))
    assert torch.equal(dynamic_decode(model, ids, mask, 3)[0], dynamic_decode(model, ids, mask, 3)[0])


def test_bad_input():
    model = apply_swaa(tiny_model("llama"), SWAAConfig(window=5, sink=4), backend="reference")
    ids, mask = batch((3,))
    cache = prefill(model, ids, mask)[0]
    with pytest.raises(ValueError, match="at least sink=4 real tokens"):
        StaticDecoder(model, cache, max_new_tokens=2)
    assert all(layer.get_seq_length() == 3 for layer in cache.layers)  # refused before anything was consumed
    with pytest.raises(ValueError, match="prefill"):
        StaticDecoder(model, DynamicCache(config=model.config), max_new_tokens=2)
    ids, mask = batch((10,))
    decoder = StaticDecoder(model, prefill(model, ids, mask)[0], max_new_tokens=2)
    with pytest.raises(RuntimeError, match="inside `with"):
        decoder.step(ids[:, -1:])
    with decoder:
        with pytest.raises(ValueError, match="input_ids has shape"):
            decoder.step(ids[:, -2:])
        decoder.step(ids[:, -1:])
    with pytest.raises(RuntimeError, match="opened once"), decoder:
        pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_graph_replays_equal_dynamic_decode(case):
    cfg, sliding = CASES[case]
    model = apply_swaa(tiny_model("qwen3").cuda(), cfg, backend="reference", sliding_cache=sliding)
    ids, mask = (t.cuda() for t in batch((20, 33)))
    want_tokens, want = dynamic_decode(model, ids, mask, NEW)
    tokens, got = static_decode(model, ids, mask, NEW, graph=True)
    assert torch.equal(tokens, want_tokens)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def reference_attention(q, k, v, mask, scale):
    """float64 masked softmax attention; mask (B, 1, 1, Lk)."""
    scores = (q.double() @ k.double().transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, -1) @ v.double()


@pytest.mark.parametrize("device, dtype", [("cpu", torch.float32), pytest.param(
    "cuda", torch.bfloat16, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))])
def test_prefix_and_new_attention_against_float64(device, dtype):
    g = torch.Generator().manual_seed(0)
    b, h, rows, d, prefix, new = 2, 3, 4, 64, 300, 9
    q, k, v = (torch.randn(b, h, n, d, generator=g) for n in (rows, prefix + new, prefix + new))
    mask = torch.zeros(b, 1, 1, prefix + new, dtype=torch.bool)
    mask[..., :prefix + 3] = True  # three new slots written so far
    mask[1, ..., prefix + 1] = False
    want = reference_attention(q, k, v, mask, d ** -0.5)
    q, k, v, mask = (t.to(device) for t in (q.to(dtype), k.to(dtype), v.to(dtype), mask))
    got = prefix_and_new_attention(q, k, v, prefix, mask[..., prefix:], d ** -0.5).double().cpu()
    assert ((got - want).norm() / want.norm()).item() < (1e-5 if dtype == torch.float32 else 1e-2)


def test_no_deprecated_cache_argument():
    """Prefill and StaticDecoder pass the KV cache as `cache` where transformers has it (5.24 on, where
    `past_key_values` warns that it goes away in 5.40) and as `past_key_values` before (5.17)."""
    model = apply_swaa(tiny_model("llama"), SWAAConfig(window=5, sink=2, fa_decode=True), backend="reference")
    ids, mask = batch((20, 33))
    if cache_argument(type(model)) == "cache":  # the old name warns here, so the check below can fail
        with pytest.warns(FutureWarning, match="past_key_values"):
            model(ids, attention_mask=mask, past_key_values=DynamicCache(config=model.config), use_cache=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        static_decode(model, ids, mask, 3)
    assert not [str(w.message) for w in caught if "past_key_values" in str(w.message)]
