"""swaa.bench on CPU with the tiny shape: rows, ratios, the correctness gate, KV-cache sizes, output files."""

import json

import pytest
import torch
import torch.nn.functional as F

from swaa import SWAAConfig
from swaa.attention import BACKENDS
from swaa.bench import BenchConfig, builtin_configs, main, parse_configs, run

WINDOW, SINK, LENGTHS = 32, 4, [64, 128]
SWAA_NAMES = ["swa_all", "swa_all_fad", "swa_half", "swa_half_fad", "swa_quarter", "swa_quarter_fad"]


def tiny_run(names, backend="auto"):
    configs = [builtin_configs(WINDOW, SINK)[n] for n in names]
    return run(configs, "tiny", LENGTHS, decode_tokens=3, repeats=1, dtype=torch.float32, device="cpu",
               backend=backend)


@pytest.fixture(scope="module")
def rows():
    return {(r["config"], r["length"]): r for r in tiny_run(["fa", "hf_sliding_flex", "hf_sliding_sdpa", *SWAA_NAMES])}


def test_every_config_timed_with_ratios_against_fa(rows):
    for name in ["fa", "hf_sliding_sdpa", *SWAA_NAMES]:
        for n in LENGTHS:
            r = rows[name, n]
            assert r["status"] == "ok" and r["passed"], r
            assert r["prefill_ms"] > 0 and r["decode_ms_per_token"] > 0
            fa = rows["fa", n]
            assert r["prefill_speedup"] == pytest.approx(fa["prefill_ms"] / r["prefill_ms"])
            assert r["decode_speedup"] == pytest.approx(fa["decode_ms_per_token"] / r["decode_ms_per_token"])
    assert rows["fa", 64]["prefill_speedup"] == 1.0
    for name in ["fa", *SWAA_NAMES]:  # static decode: checked against the reference, timed, with its ratios
        r = rows[name, 128]
        assert r["static_passed"] and r["static_rel_error"] <= r["static_tolerance"]
        assert r["static_decode_ms_per_token"] > 0 and r["static_setup_ms"] > 0
        assert r["static_decode_speedup"] == pytest.approx(rows["fa", 128]["static_decode_ms_per_token"]
                                                           / r["static_decode_ms_per_token"])
        assert r["static_vs_fa_decode"] == pytest.approx(rows["fa", 128]["decode_ms_per_token"]
                                                         / r["static_decode_ms_per_token"])
    assert "static_decode_ms_per_token" not in rows["hf_sliding_sdpa", 64]  # transformers' masks, not SWAA's
    # transformers compiles flex_attention with inductor, which fails on CPU: reported, not timed, not FAILED
    assert {rows["hf_sliding_flex", n]["status"] for n in LENGTHS} == {"UNSUPPORTED"}


def test_kv_cache_constant_for_sliding_configs_and_growing_for_full(rows):
    kv = {name: [rows[name, n]["kv_cache_mib"] for n in LENGTHS] for name in ["fa", "swa_all", "swa_all_fad",
                                                                              "hf_sliding_sdpa"]}
    assert kv["fa"][1] == pytest.approx(2 * kv["fa"][0])
    assert kv["swa_all_fad"][1] == pytest.approx(2 * kv["swa_all_fad"][0])  # FA decode keeps every key
    assert kv["swa_all"][0] == kv["swa_all"][1] < kv["fa"][0]
    assert kv["hf_sliding_sdpa"][0] == kv["hf_sliding_sdpa"][1] < kv["fa"][0]  # transformers' sliding path is used


def window_ignored(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """A broken backend: plain causal attention, as if the window and sinks were forgotten."""
    out = F.scaled_dot_product_attention(query, key, value, is_causal=query.shape[2] > 1, scale=scaling,
                                         enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def test_static_decode_failing_the_check_is_not_timed(monkeypatch):
    """A StaticDecoder that forgets the sink tokens fails its check and is not timed."""
    import swaa.static_decode as static
    monkeypatch.setattr(static, "visible", lambda q, k, p, window, sink, kind: (k >= 0) & (k <= q) & (q - k < window))
    rows = tiny_run(["swa_all"])
    assert [r["status"] for r in rows] == ["ok", "ok"]  # the DynamicCache path is still checked and timed
    assert rows[0]["rel_error"] <= rows[0]["tolerance"] and rows[0]["static_rel_error"] > rows[0]["static_tolerance"]
    assert not rows[0]["static_passed"] and all("static_decode_ms_per_token" not in r for r in rows)


def test_stock_and_static_decode_take_their_own_step_counts(monkeypatch):
    """--stock-decode-tokens sets the DynamicCache decode's steps; the static decode keeps --decode-tokens."""
    import swaa.bench as bench
    from swaa.static_decode import StaticDecoder
    steps = {"stock": [], "static": []}
    real_decode, real_static = bench.decode, StaticDecoder.greedy
    monkeypatch.setattr(bench, "decode", lambda m, lg, c, n: steps["stock"].append(n) or real_decode(m, lg, c, n))
    monkeypatch.setattr(StaticDecoder, "greedy", lambda d, lg, n: steps["static"].append(n) or real_static(d, lg, n))
    configs = [builtin_configs(WINDOW, SINK)["swa_all"]]
    row = run(configs, "tiny", [64], decode_tokens=5, repeats=1, dtype=torch.float32, device="cpu",
              stock_tokens=2)[0]
    assert row["status"] == "ok" and row["static_passed"]
    assert steps["stock"][-1] == 2 and steps["static"][-2:] == [1, 5]  # the static setup step, then the timed ones
    for bad in (0, -1):
        with pytest.raises(ValueError, match="stock_tokens >= 1"):
            run(configs, "tiny", [64], decode_tokens=5, device="cpu", stock_tokens=bad)


def test_config_failing_the_check_is_not_timed(monkeypatch):
    monkeypatch.setitem(BACKENDS, "flex", window_ignored)
    rows = tiny_run(["fa", "swa_all"], backend="flex")
    fa, broken = [r for r in rows if r["config"] == "fa"], [r for r in rows if r["config"] == "swa_all"]
    assert all(r["status"] == "ok" for r in fa)
    assert [r["status"] for r in broken] == ["FAILED", "FAILED"]
    assert all(r["rel_error"] > r["tolerance"] and "prefill_ms" not in r and r["prefill_speedup"] is None
               for r in broken)


def test_cli_writes_json_and_markdown(tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    argv = ["--device", "cpu", "--shape", "tiny", "--lengths", "48", "--decode-tokens", "2", "--repeats", "1",
            "--window", "16", "--sink", "2", "--configs", 'fa,mine={"window": 8, "full_layers": [1]}',
            "--out", str(out), "--markdown", str(md)]
    main(argv)
    data = json.loads(out.read_text())
    assert data["meta"]["command"][1:] == argv and data["meta"]["dtype"] == "fp32"
    assert [(r["config"], r["status"]) for r in data["rows"]] == [("fa", "ok"), ("mine", "ok")]
    assert data["rows"][1]["tag"] == "w8-full:1"
    table = md.read_text()
    assert table.startswith("| config | tag | length | prefill ms |") and "| mine | w8-full:1 | 48 |" in table
    assert not list(tmp_path.glob(".*.tmp"))


def test_parse_configs(tmp_path):
    presets = tmp_path / "presets.yaml"
    presets.write_text("naive: {window: 512}\n")
    configs = parse_configs('fa, naive, x={"window": 64, "sink": 4, "fa_decode": [0, 1]}, '
                            'y={"hf_window": 16, "attn_implementation": "sdpa"}', 128, 8, presets)
    assert [c.name for c in configs] == ["fa", "naive", "x", "y"]
    assert configs[1].swaa == SWAAConfig(window=512)
    assert configs[2].swaa == SWAAConfig(window=64, sink=4, fa_decode=[0, 1])
    assert configs[3] == BenchConfig("y", hf_window=16)
    with pytest.raises(ValueError, match="unknown config 'nope'"):
        parse_configs("nope", 128, 8, presets)
    with pytest.raises(ValueError, match="either hf_window"):
        parse_configs('z={"window": 8, "hf_window": 8}', 128, 8, presets)
    with pytest.raises(ValueError, match="duplicate"):
        parse_configs("fa,fa", 128, 8, presets)


def test_profile_breaks_time_into_categories(tmp_path):
    md = tmp_path / "bench.md"
    main(["--device", "cpu", "--shape", "tiny", "--lengths", "64", "--decode-tokens", "2", "--repeats", "1",
          "--window", "16", "--sink", "2", "--configs", "fa,swa_all", "--profile", "--markdown", str(md),
          "--out", str(tmp_path / "bench.json")])
    from swaa.profiling import CATEGORIES, IDLE
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    for r in rows:
        assert set(r["profile"]) == {"prefill", "decode", "static decode"}
        for phase in ("prefill", "decode", "static decode"):
            prof = r["profile"][phase]
            busy = sum(prof[c] for c, _ in CATEGORIES) + prof["other"]
            assert prof["attention"] > 0 and prof["matmul"] > 0
            # operators' self times are disjoint: counting any of them twice would exceed the wall time
            assert busy <= prof["wall_ms"] and prof[IDLE] == pytest.approx(prof["wall_ms"] - busy)
    assert "Where the time goes" in md.read_text() and "| swa_all | 64 | decode |" in md.read_text()


def test_category_names_kernels():
    from swaa.profiling import category
    assert category("void pytorch_flash::flash_fwd_kernel<...>") == "attention"
    assert category("triton_tem_fused_flex_attention_0") == "attention"
    assert category("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT") == "matmul"
    assert category("void at::native::index_elementwise_kernel<...>") == "copy/index"
    assert category("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<...>>") \
        == "elementwise/norm/rotary"
    assert category("aten::mm") == "matmul" and category("something_new") == "other"


def test_category_ms_counts_each_kernel_once():
    """On CUDA an operator's self device time repeats its kernels' time: only the kernels count."""
    from types import SimpleNamespace as Event

    from torch.autograd import DeviceType

    from swaa.profiling import category_ms
    events = [Event(key="aten::mm", device_type=DeviceType.CPU, self_device_time_total=5000, self_cpu_time_total=30),
              Event(key="nvjet_tst_128x256", device_type=DeviceType.CUDA, self_device_time_total=5000,
                    self_cpu_time_total=0),
              Event(key="cudaLaunchKernel", device_type=DeviceType.CPU, self_device_time_total=0,
                    self_cpu_time_total=20)]
    assert category_ms(events, cuda=True)["matmul"] == 5.0
    cpu = category_ms(events, cuda=False)
    assert cpu["matmul"] == pytest.approx(0.03) and sum(cpu.values()) == pytest.approx(0.03)
