"""Kernel benchmark: FA causal vs SWAA flex and flash at one length, forward and forward+backward, useful TFLOP/s.

Each backend is first checked against a float64 reference at a short length; a failing backend is not timed.
Run on a GPU: python -m swaa.bench_kernels --length 32768 --out BENCH.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from swaa.attention import BACKENDS
from swaa.attention.inputs import LayerInputs
from swaa.masks import dense_mask

log = logging.getLogger(__name__)


def visible_pairs(n: int, window: int | None, sink: int) -> int:
    """Number of (query, key) pairs an SWA layer computes for one prompt of n tokens (all rows prompt)."""
    if window is None:
        return n * (n + 1) // 2
    return sum(min(i + 1, window) + max(0, min(sink, i - window + 1)) for i in range(n))


def _inputs(n: int, window, sink: int, device) -> LayerInputs:
    pos = torch.arange(n, device=device)[None]
    kind = "full" if window is None else "swa"
    return LayerInputs(pos, pos, torch.tensor([n], device=device), window, sink, kind, ("all",), {})


def _module(x: LayerInputs) -> torch.nn.Module:
    module = torch.nn.Module()
    module.swaa_layer = SimpleNamespace(runtime=SimpleNamespace(layer_inputs=lambda *a: x), layer_idx=0)
    return module


def _qkv(n, hq, hkv, d, dtype, device, grad=False):
    """q (1, Hq, n, D), k/v (1, Hkv, n, D), laid out in memory as (1, n, H, D) like a model's projections."""
    g = torch.Generator(device=device).manual_seed(n)
    shapes = [(1, n, hq, d), (1, n, hkv, d), (1, n, hkv, d)]
    return [torch.randn(s, generator=g, device=device, dtype=dtype).transpose(1, 2).requires_grad_(grad)
            for s in shapes]


def relative_error(name: str, window, sink, hq, hkv, d, dtype, device, n=4096) -> float:
    """Largest ||x - ref|| / ||ref|| over the output and the gradients of q, k, v, against float64 dense attention."""
    q, k, v = _qkv(n, hq, hkv, d, dtype, device, grad=True)
    x = _inputs(n, window, sink, device)
    out = BACKENDS[name](_module(x), q, k, v, None, scaling=d ** -0.5)[0]
    d_out = torch.randn(out.shape, device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(1))
    got = [out.double(), *torch.autograd.grad(out, (q, k, v), d_out)]
    mask = dense_mask(x.q_pos, x.k_pos, x.prompt_len, window, sink, x.kind)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    kk, vv = (t.repeat_interleave(hq // hkv, 1) for t in (k64, v64))
    ref = F.scaled_dot_product_attention(q64, kk, vv, attn_mask=mask, scale=d ** -0.5).transpose(1, 2)
    want = [ref, *torch.autograd.grad(ref, (q64, k64, v64), d_out.double())]
    return max(((a.double() - b).norm() / b.norm()).item() for a, b in zip(got, want))


def time_ms(fn, repeats: int = 10) -> float:
    """Median of CUDA-event timings after warm-up."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def bench(length: int, window: int, sinks: list[int], hq=32, hkv=8, d=128, dtype=torch.bfloat16) -> list[dict]:
    device = torch.device("cuda")
    rows = []
    q, k, v = _qkv(length, hq, hkv, d, dtype, device, grad=True)
    kk, vv = (t.detach().repeat_interleave(hq // hkv, 1).requires_grad_() for t in (k, v))
    dout = torch.randn(1, length, hq, d, device=device, dtype=dtype)

    def fa_fwd():
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, kk, vv, is_causal=True)

    def fa_fwd_bwd():
        F.scaled_dot_product_attention(q, kk, vv, is_causal=True).transpose(1, 2).backward(dout)

    cases = [("fa_causal", None, 0, fa_fwd, fa_fwd_bwd, None)]
    for sink in sinks:
        for name in ("flex", "flash"):
            x = _inputs(length, window, sink, device)
            module = _module(x)

            def fwd(name=name, module=module):
                with torch.no_grad():
                    return BACKENDS[name](module, q, k, v, None, scaling=d ** -0.5)[0]

            def fwd_bwd(name=name, module=module):
                BACKENDS[name](module, q, k, v, None, scaling=d ** -0.5)[0].backward(dout)

            try:
                err = relative_error(name, window, sink, hq, hkv, d, dtype, device)
            except Exception:  # a crash is a failed check: reported, not timed, the other kernels still run
                log.exception("%s W=%s S=%s: correctness check raised", name, window, sink)
                err = float("nan")
            cases.append((name, window, sink, fwd, fwd_bwd, err))
    for name, w, s, fwd, fwd_bwd, err in cases:
        if err is not None and not err < 2e-2:
            log.error("%s W=%s S=%s failed the correctness check (rel. error %.2e): not timed", name, w, s, err)
            rows.append({"kernel": name, "window": w, "sink": s, "rel_error": err, "status": "FAILED"})
            continue
        pairs = visible_pairs(length, w, s)
        flops = 4 * pairs * d * hq
        t_fwd = time_ms(fwd)
        t_fb = time_ms(fwd_bwd) if fwd_bwd else None
        rows.append({"kernel": name, "window": w, "sink": s, "rel_error": err, "fwd_ms": t_fwd,
                     "fwd_tflops": flops / t_fwd / 1e9, "fwd_bwd_ms": t_fb,
                     "fwd_bwd_tflops": 3.5 * flops / t_fb / 1e9 if t_fb else None, "visible_pairs": pairs})
        log.info("%s", rows[-1])
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    head = ("| kernel | W | S | rel. error vs fp64 (max of out, dq, dk, dv) | fwd ms | fwd TFLOP/s | fwd+bwd ms "
            "| fwd+bwd TFLOP/s |\n|---|---|---|---|---|---|---|---|")
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    lines = [head] + [
        f"| {r['kernel']} | {r['window'] or 'full'} | {r['sink']} | {fmt(r['rel_error'], '.1e')} | "
        f"{fmt(r.get('fwd_ms'), '.2f')} | {fmt(r.get('fwd_tflops'), '.0f')} | {fmt(r.get('fwd_bwd_ms'), '.2f')} | "
        f"{fmt(r.get('fwd_bwd_tflops'), '.0f')} |" for r in rows]
    return "\n".join(lines) + "\n\n" + ", ".join(f"{k}: {v}" for k, v in meta.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--sinks", type=int, nargs="+", default=[0, 64])
    parser.add_argument("--out", default=None, help="write rows and metadata as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        raise SystemExit("swaa.bench_kernels needs a CUDA GPU")
    rows = bench(args.length, args.window, args.sinks)
    import transformers
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "length": args.length, "heads": "32q/8kv", "head_dim": 128,
            "dtype": "bf16", "useful FLOPs": "visible pairs x 4 x head_dim x heads (fwd+bwd: x3.5)"}
    print(markdown(rows, meta))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "meta": meta}, f, indent=1)


if __name__ == "__main__":
    main()
