"""swaa.attention.sink_backward and the fa4 backend's dense calls against float64 attention: natively on CUDA, and on
the CPU under Triton's interpreter (this module run again in a subprocess with TRITON_INTERPRET=1)."""

import importlib.util
import os
import random
import subprocess
import sys

import pytest
import torch

from swaa.attention.inputs import LayerInputs
from swaa.masks import dense_mask
from test_attention import attention64, fa4_stand_in, varlen_dense_backward

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available() and not INTERPRETED
kernels = pytest.mark.skipif(not HAS_TRITON or not (CUDA or INTERPRETED),
                             reason="needs Triton and a GPU, or Triton's interpreter")
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float64  # the interpreter computes in float64 exactly


@pytest.mark.skipif(not HAS_TRITON or INTERPRETED or torch.cuda.is_available(), reason="CPU without Triton's "
                    "interpreter: runs the kernel tests below under it")
def test_kernels_under_the_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and " failed" not in run.stdout, run.stdout[-4000:] + run.stderr[-2000:]
    assert "\n32 passed" in run.stdout, run.stdout[-2000:]


def close(got, want, rel=1e-2):
    """Within 1e-5 in float64 (the log-sum-exp is float32, as FA4's); in bf16 within `rel` of the reference's norm."""
    if DTYPE == torch.float64:
        return (got.double() - want).abs().max().item() < 1e-5
    return (got.double() - want).norm().item() <= rel * want.norm().item() + 1e-6


@kernels
@pytest.mark.parametrize("seed", range(30))
def test_fa4_dense_calls_match_float64(seed, monkeypatch):
    """The fa4 backend on unpadded batches (dense window, block-sparse and causal calls, their backward with the sink
    keys by sink_backward_): output and gradients against float64; on the CPU with FA4's kernels replaced by exact
    stand-ins."""
    from swaa.attention import fa4, sink_backward
    from swaa.attention.flash import flash_attention
    if CUDA and fa4.fa4_unavailable() is not None:
        pytest.skip("needs flash-attn-4 on sm90+")
    if not CUDA:  # FA4's kernels and PyTorch's FlashAttention backward (untrusted head dims): exact stand-ins
        fa4_stand_in(monkeypatch)
        monkeypatch.setattr(fa4, "flash_varlen_backward", varlen_dense_backward)
    rng = random.Random(1000 + seed)
    b, hkv, g, d = rng.randint(1, 2), rng.choice([1, 2]), rng.choice([1, 2, 4]), rng.choice([16, 64, 128])
    n = rng.randint(1, 300) if seed % 10 else rng.randint(1100, 2600)
    if not seed % 10:  # several backward programs per head, whose dk, dv partial sums meet in atomics
        monkeypatch.setitem(sink_backward.BACKWARD_LAUNCH, "ROWS", 512)
    window, sink = rng.choice([1, 7, 16, 100]), rng.choice([0, 1, 3, 64])
    kind = rng.choice(["swa", "swa_fa_decode"])
    pos = torch.arange(n, device=DEVICE)[None].expand(b, n)
    x = LayerInputs(pos, pos, torch.full((b,), rng.randint(0, n), device=DEVICE), window, sink, kind, ("all",), {})
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64).to(DEVICE, DTYPE)
               for h in (hkv * g, hkv, hkv))
    weight = torch.randn(b, n, hkv * g, d, generator=gen, dtype=torch.float64).to(DEVICE)
    results = []
    for ours in (True, False):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        if ours:
            out = flash_attention(*leaves, x, 0.3, **fa4.fa4_kernels(d))
        else:
            mask = dense_mask(x.q_pos, x.k_pos, x.prompt_len, window, sink, kind)
            out = attention64(*(t.double() for t in leaves), mask, 0.3)
        (out.double() * weight).sum().backward()
        results.append([out.double()] + [t.grad.double() for t in leaves])
    for got, want in zip(*results):
        assert close(got, want, rel=2e-2), (seed, kind, n, window, sink, d)


@kernels
def test_sinks_bench_check_passes_for_the_current_launch():
    """`python -m swaa.bench sinks` checks each launch candidate against float64 before timing it: the launch
    parameters sink_backward.py uses pass it."""
    from swaa.attention.sink_backward import BACKWARD_LAUNCH
    from swaa.bench.sinks import check_error
    err = check_error(BACKWARD_LAUNCH, 5, 4, 2, 16, DTYPE, DEVICE, n=200, window=50)
    assert err < (1e-5 if DTYPE == torch.float64 else 2e-2), err


@kernels
def test_sinks_bench_times_each_candidate_and_reports_a_failed_check(monkeypatch):
    """The sinks job's loop: every candidate checked, then timed; one whose programs overlap (fewer rows a program
    than a step) fails its float64 check and is reported, not timed."""
    from swaa.attention.sink_backward import BACKWARD_LAUNCH
    from swaa.bench import sinks
    overlapping = {**BACKWARD_LAUNCH, "ROWS": BACKWARD_LAUNCH["BLOCK"] // 2}
    monkeypatch.setattr(sinks, "BACKWARD_SPACE", [dict(BACKWARD_LAUNCH), overlapping])
    rows = sinks.bench(300, 50, 5, 1, hq=2, hkv=1, d=16, dtype=DTYPE, device=torch.device(DEVICE), copy_bytes=2 ** 20)
    assert len(rows) == 2 and rows[0]["status"] == "ok" and rows[0]["ms"] > 0 and rows[0]["of_copy"] > 0, rows[0]
    assert rows[1]["status"].startswith("FAILED: ValueError: relative error") and "ms" not in rows[1], rows[1]
