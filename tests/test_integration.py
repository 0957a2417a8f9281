"""apply_swaa on tiny random Llama/Qwen3 models: training = inference semantics, generation, cache, round trips."""

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from conftest import tiny_model
from test_attention import CUDNN
from swaa import SWAAConfig, apply_swaa, integration, prompt_lengths, remove_swaa, swaa_disabled
from swaa.attention import BACKENDS
from swaa.cache import SinkWindowLayer
from swaa.integration import available_backends, check_backends

CFG = SWAAConfig(window=6, sink=2, fa_decode=[0, 2], full_layers=[1])


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():
        yield


def batch(lengths=(23, 30), vocab=128, seed=0):
    """Left-padded random prompts of different lengths."""
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), n), generator=g)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, n - length:] = 1
        ids[row, : n - length] = 0
    return ids, mask


def greedy(model, ids, mask, new=8, **kwargs):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0, **kwargs)
    return out.sequences, torch.stack(out.logits, 1)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_window_none_and_disabled_identical_to_unpatched(family):
    model = tiny_model(family)
    ids, mask = batch()
    want = model(ids, attention_mask=mask).logits
    apply_swaa(model, SWAAConfig(), backend="reference")
    assert torch.equal(model(ids, attention_mask=mask).logits, want)
    apply_swaa(model, CFG, backend="reference")
    assert not torch.allclose(model(ids, attention_mask=mask).logits, want)
    with swaa_disabled(model):
        assert torch.equal(model(ids, attention_mask=mask).logits, want)
    remove_swaa(model)
    assert torch.equal(model(ids, attention_mask=mask).logits, want)
    assert "swaa" not in model.config.to_dict()


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("backend", ["reference", "chunked", "flex"])
def test_teacher_forcing_equals_generation(family, backend, monkeypatch):
    """Loss-time forward (answer rows from labels) gives the logits generate saw: SWA prefill, FA decode."""
    monkeypatch.setattr("swaa.attention.chunked.BLOCK", 8)
    model = tiny_model(family)
    apply_swaa(model, CFG, backend=backend)
    ids, mask = batch()
    seq, step_logits = greedy(model, ids, mask)
    full_mask = torch.cat([mask, torch.ones_like(seq[:, ids.shape[1]:])], 1)
    labels = torch.full_like(seq, -100)
    labels[:, ids.shape[1]:] = seq[:, ids.shape[1]:]
    out = model(seq, attention_mask=full_mask, labels=labels)
    forced = out.logits[:, ids.shape[1] - 1:-1]
    assert torch.allclose(forced, step_logits, atol=1e-4), (forced - step_logits).abs().max()
    assert torch.isfinite(out.loss)


def test_answer_rows_use_full_attention_and_prompt_rows_swa():
    model = tiny_model("llama")
    ids, mask = batch((30, 30))
    labels = torch.full_like(ids, -100)
    labels[:, 20:] = ids[:, 20:]
    with_labels = apply_swaa(model, SWAAConfig(window=4, fa_decode=True), backend="reference")(
        ids, attention_mask=mask, labels=labels).logits
    fa = tiny_model("llama")(ids, attention_mask=mask).logits
    swa_model = apply_swaa(tiny_model("llama"), SWAAConfig(window=4), backend="reference")
    swa = swa_model(ids, attention_mask=mask).logits
    assert torch.allclose(with_labels[:, :20], swa[:, :20], atol=1e-5)  # prompt rows: SWA
    assert not torch.allclose(with_labels[:, 20:], fa[:, 20:], atol=1e-3)  # answer rows still read SWA hidden states
    # with every layer full for answers and a 1-token prompt, answer rows equal plain FA
    labels[:, 1:] = ids[:, 1:]
    one = model(ids, attention_mask=mask, labels=labels).logits
    assert torch.allclose(one[:, 1:], fa[:, 1:], atol=1e-5)


def test_generation_identical_across_backends():
    ids, mask = batch((17, 40, 9))
    results = []
    for backend in ("reference", "flex"):
        model = apply_swaa(tiny_model("qwen3"), SWAAConfig(window=5, sink=3, fa_decode=True, full_layers="odd"),
                           backend=backend)
        results.append(greedy(model, ids, mask, new=12))
    assert torch.equal(results[0][0], results[1][0])


def test_multi_token_decode_and_chunked_prefill():
    model = apply_swaa(tiny_model("llama"), CFG, backend="reference")
    ids, mask = batch()
    seq, _ = greedy(model, ids, mask, new=6)
    full_mask = torch.cat([mask, torch.ones_like(seq[:, ids.shape[1]:])], 1)
    labels = torch.full_like(seq, -100)
    labels[:, ids.shape[1]:] = seq[:, ids.shape[1]:]
    want = model(seq, attention_mask=full_mask, labels=labels).logits
    # prefill, then 4 answer tokens in one forward (q_len > 1 decode), then 2 more
    cache = DynamicCache()
    n = ids.shape[1]
    model(ids, attention_mask=mask, past_key_values=cache)
    step = model(seq[:, n:n + 4], attention_mask=full_mask[:, :n + 4], past_key_values=cache).logits
    assert torch.allclose(step, want[:, n:n + 4], atol=1e-4)
    # chunked prefill: the prompt arrives in 3 chunks, the last of 1 token (still prompt, not decode)
    cache = DynamicCache()
    with prompt_lengths(model, mask.sum(1)):
        for a, b in [(0, 10), (10, n - 1), (n - 1, n), (n, n + 6)]:
            logits = model(seq[:, a:b], attention_mask=full_mask[:, :b], past_key_values=cache).logits
            real = full_mask[:, a:b].bool()  # padding rows are unspecified
            assert torch.allclose(logits[real], want[:, a:b][real], atol=1e-4), (a, b)
    with prompt_lengths(model, mask.sum(1)):
        chunked, _ = greedy(model, ids, mask, new=6, prefill_chunk_size=7)
    assert torch.equal(chunked, seq)


def test_sliding_cache_equals_full_cache_and_is_constant():
    cfg = SWAAConfig(window=5, sink=2)
    model = apply_swaa(tiny_model("llama"), cfg, backend="reference", sliding_cache=False)
    ids, mask = batch((20, 33))
    want, _ = greedy(model, ids, mask, new=15)
    apply_swaa(model, cfg, backend="reference")
    sizes = []
    for length in (33, 60):
        ids2, mask2 = batch((20, length))
        cache = DynamicCache(config=model.config)
        seq, _ = greedy(model, ids2, mask2, new=15, past_key_values=cache)
        assert all(isinstance(layer, SinkWindowLayer) for layer in cache.layers)
        assert len({id(layer.plan) for layer in cache.layers}) == 1  # one slot plan per step for all SWA layers
        assert len({layer.keys.shape for layer in cache.layers}) == 1
        sizes.append(cache.layers[0].keys.shape[2])
        if length == 33:
            assert torch.equal(seq, want)
    assert sizes == [2 * 2 + 4, 2 * 2 + 4]  # two rows' sinks (different padding) + W-1 window keys


def test_decode_continues_the_prompt_length_of_its_own_cache():
    """P belongs to the cache being continued: not to the model's last forward, not lost after prompt_lengths."""
    model = apply_swaa(tiny_model("llama"), SWAAConfig(window=3, fa_decode=True), backend="reference")
    ids, mask = batch((20, 14))
    other, other_mask = batch((31, 31), seed=1)
    seq, _ = greedy(model, ids, mask, new=4)
    full_mask = torch.cat([mask, torch.ones_like(seq[:, ids.shape[1]:])], 1)
    labels = torch.full_like(seq, -100)
    labels[:, ids.shape[1]:] = seq[:, ids.shape[1]:]
    n = ids.shape[1]
    want = model(seq, attention_mask=full_mask, labels=labels).logits[:, n:]

    def decode(cache):
        return model(seq[:, n:], attention_mask=full_mask, past_key_values=cache).logits

    cache = DynamicCache()
    model(ids, attention_mask=mask, past_key_values=cache)
    model(other, attention_mask=other_mask)  # another sequence in between (scoring, a second cache)
    model(other, attention_mask=other_mask, past_key_values=DynamicCache())
    assert torch.allclose(decode(cache), want, atol=1e-5)
    cache = DynamicCache()
    with prompt_lengths(model, mask.sum(1)):  # chunked prefill, decode after the block
        model(ids[:, :9], attention_mask=mask[:, :9], past_key_values=cache)
        model(ids[:, 9:], attention_mask=mask, past_key_values=cache)
    assert torch.allclose(decode(cache), want, atol=1e-5)
    made = model(ids, attention_mask=mask, use_cache=True).past_key_values
    assert torch.allclose(decode(made), want, atol=1e-5)  # a cache the model made itself
    with pytest.raises(RuntimeError, match="whose prefill SWAA did not see"):
        with swaa_disabled(model):
            model(ids, attention_mask=mask, past_key_values=(fa_cache := DynamicCache()))
        decode(fa_cache)
    with pytest.raises(ValueError, match=r"prompt_lengths: got \[1\] lengths for a batch of 2 sequences"):
        with prompt_lengths(model, [20]):
            model(ids, attention_mask=mask)


def test_sliding_cache_with_right_padding_equals_full_cache():
    """The sink + window cache keeps each row's last W-1 real keys wherever its padding is."""
    ids, mask = batch((10, 6), seed=3)
    ids[1], mask[1] = ids[1].roll(-4), mask[1].roll(-4)  # row 1 padded on the right
    logits = []
    for sliding in (False, True):
        model = apply_swaa(tiny_model("llama"), SWAAConfig(window=4, sink=1), backend="reference",
                           sliding_cache=sliding)
        cache = DynamicCache()
        step = model(ids, attention_mask=mask, past_key_values=cache).logits[:, -1:].argmax(-1)
        for _ in range(3):
            mask = torch.cat([mask, torch.ones_like(step)], 1)
            out = model(step, attention_mask=mask, past_key_values=cache).logits
            logits.append(out)
            step = out.argmax(-1)
        mask = mask[:, :-3]
    assert torch.allclose(torch.cat(logits[:3], 1), torch.cat(logits[3:], 1), atol=1e-5)


def test_model_with_its_own_sliding_window_generates_swaa():
    """A config with a native sliding window (Mistral) gets SWAA's cache layers, not ones that drop keys."""
    from transformers import MistralConfig, MistralForCausalLM
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             sliding_window=8)).eval()
    apply_swaa(model, SWAAConfig(window=4, sink=1, fa_decode=True), backend="reference")
    ids, mask = batch((20, 13))
    seq, step_logits = greedy(model, ids, mask, new=4)
    full_mask = torch.cat([mask, torch.ones_like(seq[:, ids.shape[1]:])], 1)
    labels = torch.full_like(seq, -100)
    labels[:, ids.shape[1]:] = seq[:, ids.shape[1]:]
    forced = model(seq, attention_mask=full_mask, labels=labels).logits[:, ids.shape[1] - 1:-1]
    assert torch.allclose(forced, step_logits, atol=1e-4)


def test_generate_installs_sliding_cache_only_where_safe():
    model = apply_swaa(tiny_model("llama"), SWAAConfig(window=4, sink=1, fa_decode=[0], full_layers=[1]),
                       backend="reference")
    ids, mask = batch()
    cache = DynamicCache(config=model.config)
    greedy(model, ids, mask, past_key_values=cache)
    assert [type(layer).__name__ for layer in cache.layers] == ["DynamicLayer", "DynamicLayer", "SinkWindowLayer",
                                                                 "SinkWindowLayer"]


def test_save_load_round_trip(tmp_path):
    model = apply_swaa(tiny_model("qwen3"), CFG, backend="reference")
    ids, mask = batch()
    want = model(ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert SWAAConfig.from_dict(loaded.config.swaa) == CFG
    apply_swaa(loaded, backend="reference")
    assert torch.allclose(loaded(ids, attention_mask=mask).logits, want, atol=1e-6)


def test_peft_wrapped_model():
    from peft import LoraConfig, get_peft_model
    model = tiny_model("llama")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    apply_swaa(peft_model.get_base_model(), CFG, backend="reference")
    ids, mask = batch()
    labels = ids.masked_fill(mask == 0, -100)
    assert torch.isfinite(peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss)
    with pytest.raises(TypeError, match="get_base_model"):
        apply_swaa(peft_model, CFG)


def test_bad_input_errors():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=r"full_layers: layer indices \[9\] out of range"):
        apply_swaa(model, SWAAConfig(window=4, full_layers=[9]))
    for backend in ("flash", "cudnn"):
        with pytest.raises(ValueError, match=f"'{backend}' needs a CUDA device"):
            apply_swaa(model, SWAAConfig(window=4), backend=backend)
    with pytest.raises(ValueError, match="unknown SWAA backend 'fast'; choose one of reference, chunked, flex, fa4, "
                                         "flash, cudnn, auto$"):
        apply_swaa(model, SWAAConfig(window=4), backend="fast")
    with pytest.raises(ValueError, match="no SWAA config given"):
        apply_swaa(model)

    class NoInterface(type(model)):
        _supports_attention_backend = False

    with pytest.raises(ValueError, match="NoInterface is not supported: SWAA needs Llama"):
        apply_swaa(NoInterface(model.config), SWAAConfig(window=4))
    apply_swaa(model, SWAAConfig(window=4), backend="reference")
    ids, mask = batch()
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 10\)"):
        model(ids, attention_mask=mask[:, :10])
    with pytest.raises(RuntimeError, match="outside a forward"):
        model.model.layers[0].self_attn.swaa_layer.runtime.fwd = None
        model.model(ids, attention_mask=mask)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_every_backend_is_registered_under_its_own_name(backend, monkeypatch):
    """apply_swaa maps every backend, CUDA-only ones too (device check skipped), to a registered implementation."""
    monkeypatch.setattr(integration, "resolve_backend", lambda name, device: name)
    model = apply_swaa(tiny_model("llama"), SWAAConfig(window=4), backend=backend)
    name = model.config._attn_implementation
    assert "flash" not in name and ALL_ATTENTION_FUNCTIONS[name] is BACKENDS[backend]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["flex", "flash", "auto", CUDNN])
def test_cuda_backends_model_level(backend):
    """bf16 on the GPU: teacher-forced logits and generation logits of flex/flash close to the float32 reference."""
    cfg = SWAAConfig(window=16, sink=4, fa_decode=[0, 2], full_layers=[1])
    ids, mask = batch((90, 140))
    ids, mask = ids.cuda(), mask.cuda()
    ref = apply_swaa(tiny_model("llama").cuda(), cfg, backend="reference")
    seq, want = greedy(ref, ids, mask, new=10)
    model = apply_swaa(tiny_model("llama").cuda().to(torch.bfloat16), cfg, backend=backend)
    full_mask = torch.cat([mask, torch.ones_like(seq[:, ids.shape[1]:])], 1)
    labels = torch.full_like(seq, -100)
    labels[:, ids.shape[1]:] = seq[:, ids.shape[1]:]
    forced = model(seq, attention_mask=full_mask, labels=labels).logits[:, ids.shape[1] - 1:-1].float()
    assert ((forced - want).norm() / want.norm()).item() < 2e-2
    _, got = greedy(model, ids, mask, new=10)
    # generation may diverge after a bf16 near-tie; compare the first step, which sees identical inputs
    assert ((got[:, 0].float() - want[:, 0]).norm() / want[:, 0].norm()).item() < 2e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_flash_under_autocast_and_auto_choice():
    cfg = SWAAConfig(window=16, sink=4, fa_decode=True, full_layers=[1])
    ids, mask = batch((90, 140))
    ids, mask = ids.cuda(), mask.cuda()
    want = apply_swaa(tiny_model("llama").cuda(), cfg, backend="reference")(ids, attention_mask=mask).logits
    model = apply_swaa(tiny_model("llama").cuda(), cfg)
    assert model.swaa_runtime.backend == "auto"
    apply_swaa(model, cfg, backend="flash")
    with torch.autocast("cuda", dtype=torch.bfloat16):  # float32 weights, bf16 attention
        got = model(ids, attention_mask=mask).logits.float()
    real = mask.bool()
    assert ((got - want)[real].norm() / want[real].norm()).item() < 2e-2


def test_backends_available_on_cpu_and_the_error_for_one_that_is_not():
    assert available_backends(torch.device("cpu")) == ["auto", "chunked", "flex", "reference"]
    check_backends(["auto", "flex", "chunked", "reference"], torch.device("cpu"), "--backends")
    with pytest.raises(ValueError, match=r"^--backends flash: not available on cpu \(backend 'flash' needs a CUDA "
                                         r"device.*\); available on cpu: \['auto', 'chunked', 'flex', 'reference'\]$"):
        check_backends(["flex", "flash"], torch.device("cpu"), "--backends")


def test_a_cuda_device_without_the_fa4_and_cudnn_packages(monkeypatch):
    """resolve_backend's checks decide: a missing flash-attn-4 (ValueError) or nvidia-cudnn-frontend (RuntimeError)."""
    def no_cudnn():
        raise RuntimeError("backend 'cudnn' needs the optional package nvidia-cudnn-frontend")

    monkeypatch.setattr(integration, "fa4_unavailable", lambda index: "it needs the flash-attn-4 package")
    monkeypatch.setattr(integration, "cudnn_ops", no_cudnn)
    cuda = torch.device("cuda")
    assert available_backends(cuda) == ["auto", "chunked", "flash", "flex", "reference"]
    with pytest.raises(ValueError, match=r"^--backend fa4: not available on cuda \(.*it needs the flash-attn-4 "
                                         r"package.*\); available on cuda: \['auto', 'chunked', 'flash'"):
        check_backends(["fa4"], cuda, "--backend")
    with pytest.raises(ValueError, match=r"^--backends cudnn: not available on cuda \(.*nvidia-cudnn-frontend\)"):
        check_backends(["flash", "cudnn"], cuda, "--backends")
