"""swaa.bench.kernels' CPU-side arithmetic: visible pairs, proportional-time ratios, the table, the tuning list, the
choice of kernels."""

import argparse
import contextlib
import functools
import math
import sys
import types

import pytest
import torch
from torch.nn.attention import SDPBackend

import swaa.bench.kernels as bench_kernels
from swaa.attention import BACKENDS
from swaa.bench.kernels import (_causal_cases, _swaa_case, _tunings, add_proportional, backend_call, check_error,
                                fa4_native_call, markdown, visible_pairs)
from test_bench_model import window_ignored


def test_visible_pairs_counts_window_and_sink_keys():
    assert visible_pairs(5, None, 0) == 15
    # W=2: rows see 1, 2, 2, 2, 2 window keys; S=1 adds the first key to rows 2.. (i - W + 1 >= 1)
    assert visible_pairs(5, 2, 0) == 9 and visible_pairs(5, 2, 1) == 9 + 3


def test_proportional_ratio_against_every_causal_kernel():
    times = lambda fwd, fwd_bwd: {"fwd_ms": fwd, "fwd_ms_min": fwd - 0.5, "fwd_bwd_ms": fwd_bwd,  # noqa: E731
                                  "fwd_bwd_ms_min": fwd_bwd}
    rows = [{"kernel": "fa_causal", "window": None, "sink": 0, "status": "ok", **times(10.0, 40.0)},
            {"kernel": "flash_causal", "window": None, "sink": 0, "status": "ok", **times(20.0, 50.0)},
            {"kernel": "cudnn_causal", "window": None, "sink": 0, "status": "UNSUPPORTED"},
            {"kernel": "flex", "window": 4, "sink": 0, "status": "ok", **times(3.0, 20.0), "visible_pairs": 25,
             "rel_error": 1e-3},
            {"kernel": "flash", "window": 4, "sink": 0, "status": "FAILED", "rel_error": 1.0}]
    add_proportional(rows, causal_pairs=100)
    assert rows[3]["fwd_vs_proportional"] == pytest.approx({"fa_causal": 1.2, "flash_causal": 0.6})
    assert rows[3]["fwd_bwd_vs_proportional"] == pytest.approx({"fa_causal": 2.0, "flash_causal": 1.6})
    assert "fwd_vs_proportional" not in rows[4]
    for r in rows:
        r.setdefault("rel_error", None)
    table = markdown(rows, {"gpu": "x"})
    assert "| fwd / proportional fa_causal | fwd / proportional flash_causal | fwd+bwd / proportional fa_causal |" \
        in table
    assert "fwd ms min / median" in table and "| fa_causal | full | 0 | n/a | 9.50 / 10.00 |" in table
    assert "| flex | 4 | 0 | 1.0e-03 | 2.50 / 3.00 |" in table and "| 1.20 | 0.60 | 2.00 | 1.60 |" in table


def test_flex_tunings_must_be_a_json_list_of_objects():
    assert _tunings('[{}, {"USE_TMA": true}]') == [{}, {"USE_TMA": True}]
    for bad in ('{"USE_TMA": true}', "[1]", "[{"):
        with pytest.raises(argparse.ArgumentTypeError, match="--flex-tunings"):
            _tunings(bad)


def test_each_forced_causal_case_runs_under_its_own_kernel(monkeypatch):
    """Every causal row enters SDPA with its own backend (a late-bound loop variable once made them all cuDNN)."""
    entered = []
    monkeypatch.setattr(bench_kernels, "sdpa_kernel",
                        lambda backend: entered.append(backend) or contextlib.nullcontext())
    q = torch.randn(1, 2, 8, 4, requires_grad=True)
    cases = _causal_cases(q, q.detach().clone(), q.detach().clone(), torch.randn(1, 8, 2, 4))
    for name, _, _, fwd, fwd_bwd, _ in cases:
        fwd()
        fwd_bwd()
    assert [c[0] for c in cases] == list(bench_kernels.CAUSAL_KERNELS)
    assert entered == [SDPBackend.FLASH_ATTENTION] * 2 + [SDPBackend.CUDNN_ATTENTION] * 2


def test_check_error_passes_a_correct_backend_and_catches_a_forgotten_window(monkeypatch):
    """The gate before timing: output and gradients against float64 attention (CPU, float32, short sequence)."""
    args = dict(window=32, sink=4, hq=4, hkv=2, d=16, dtype=torch.float32, device=torch.device("cpu"), n=256)
    chunked = functools.partial(backend_call, "chunked")
    assert check_error(chunked, **args) < 1e-5
    monkeypatch.setitem(BACKENDS, "chunked", window_ignored)
    assert check_error(chunked, **args) > bench_kernels.TOLERANCE


def test_flex_without_a_window_is_causal_attention():
    """The `flex_causal` row: flex with window None passes the float64 gate as plain causal attention, sinks or not."""
    args = dict(hq=4, hkv=2, d=16, dtype=torch.float32, device=torch.device("cpu"), n=256)
    flex = functools.partial(backend_call, "flex")
    assert check_error(flex, None, 0, **args) < 1e-5
    assert check_error(flex, None, 4, **args) < 1e-5


def test_a_kernel_that_raises_is_a_failed_check_and_never_timed():
    """FA4's own window has no sinks: asking for them fails the case (NaN error), so the bench reports FAILED."""
    q = torch.randn(1, 2, 8, 4)
    label, window, sink, *_, err = _swaa_case(fa4_native_call, None, 4, 2, q, q, q, None, "fa4_native")
    assert (label, window, sink) == ("fa4_native", 4, 2) and math.isnan(err)


def _fake_flash_attn_func(q, k, v, softmax_scale=None, causal=False, window_size=(None, None)):
    """flash-attn-4's `flash_attn_func` on (B, L, H, D) with GQA: query i sees key j iff i - left <= j <= i (causal)."""
    assert causal and window_size[1] in (0, None)
    n, hq = q.shape[1], q.shape[2]
    k, v = (t.repeat_interleave(hq // t.shape[2], 2) for t in (k, v))
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    mask = (j <= i) & (i - j <= (n if window_size[0] is None else window_size[0]))
    out = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask,
                                                           scale=softmax_scale)
    return out.transpose(1, 2), None


@pytest.mark.parametrize("window", [None, 32])
def test_fa4_native_call_asks_for_the_window_swaa_means(monkeypatch, window):
    """FA4's own kernel is called on (B, L, H, D) views with window_size (W - 1, 0): W keys per query, as SWAA's W."""
    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_func = _fake_flash_attn_func
    monkeypatch.setitem(sys.modules, "flash_attn", types.ModuleType("flash_attn"))
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    args = dict(hq=4, hkv=2, d=16, dtype=torch.float32, device=torch.device("cpu"), n=256)
    assert check_error(fa4_native_call, window, 0, **args) < 1e-5


def test_kernels_option_times_only_the_named_kernels(monkeypatch):
    """`--kernels`: only the named rows are checked and timed (each at every sink count where it has sinks), SDPA's
    kernel choice is recorded on SDPA's row alone, and a choice that leaves nothing to run here is an error."""
    made = []

    def case(make_call, tune, window, sink, q, k, v, dout, label):
        made.append(label)
        return label, window, sink, lambda: None, lambda: None, 0.0
    monkeypatch.setattr(bench_kernels, "_swaa_case", case)
    monkeypatch.setattr(bench_kernels, "fa4_unavailable", lambda: None)
    monkeypatch.setattr(bench_kernels, "warm_then_time", lambda fn, device, repeats, warmups: [1.0] * repeats)
    monkeypatch.setattr(bench_kernels, "sdpa_choice", lambda q, k, v: "FLASH_ATTENTION")
    cpu = torch.device("cpu")
    rows = bench_kernels.bench(64, 16, [0, 4], hq=2, hkv=1, d=8, repeats=2, device=cpu,
                               kernels=("fa_causal", "fa4", "fa4_native"))
    assert [(r["kernel"], r["sink"]) for r in rows] == [("fa_causal", 0), ("fa4", 0), ("fa4_native", 0), ("fa4", 4)]
    assert made == ["fa4", "fa4_native", "fa4"]
    assert [r.get("sdpa_choice") for r in rows] == ["FLASH_ATTENTION", None, None, None]
    assert rows[1]["fwd_vs_proportional"] == pytest.approx(
        {"fa_causal": visible_pairs(64, None, 0) / visible_pairs(64, 16, 0)})
    rows = bench_kernels.bench(64, 16, [4], hq=2, hkv=1, d=8, repeats=2, device=cpu, kernels=("fa4",))
    assert [r["kernel"] for r in rows] == ["fa4"] and "sdpa_choice" not in rows[0]  # SDPA's choice: its row only
    monkeypatch.setattr(bench_kernels, "fa4_unavailable", lambda: "no flash-attn-4")
    with pytest.raises(ValueError, match="--kernels fa4 fa4_native: none of them can run here"):
        bench_kernels.bench(64, 16, [0], hq=2, hkv=1, d=8, repeats=2, device=cpu, kernels=("fa4", "fa4_native"))
