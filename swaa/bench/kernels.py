"""Kernels: one attention layer's forward and forward+backward time per SWAA backend against causal SDPA (CUDA only).

Each backend is checked against float64 attention (output and gradients) first and not timed if it fails; times are
min and median after warm-up calls; useful TFLOP/s and time over the visible-pair share of causal attention."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import logging
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from swaa.attention import BACKENDS
from swaa.attention.fa4 import fa4_unavailable
from swaa.attention.flex import tuning as flex_tuning
from swaa.attention.inputs import LayerInputs
from swaa.bench.common import int_at_least, relative_error, run_metadata, write_results
from swaa.files import check_output_path
from swaa.masks import dense_mask
from swaa.timing import min_median, warm_then_time

log = logging.getLogger(__name__)
WARMUPS = 3  # untimed calls of each kernel before its timed repeats
CHECK_TOKENS = 4096
TOLERANCE = 2e-2  # largest relative error vs float64 (output, dq, dk, dv) that passes
FA4_FLEX = {"BACKEND": "FLASH"}  # FlexAttention's FlashAttention-4 backend: flex's block mask on CuTe DSL kernels


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


def backend_call(name: str, window: int | None, sink: int, n: int, device) -> Callable:
    """(q, k, v) -> output (B, n, Hq, D) of SWAA backend `name` on one all-prompt sequence of n tokens."""
    module = _module(_inputs(n, window, sink, device))
    return lambda q, k, v: BACKENDS[name](module, q, k, v, None, scaling=q.shape[-1] ** -0.5)[0]


def fa4_native_call(window: int | None, sink: int, n: int, device) -> Callable:
    """(q, k, v) -> output (B, n, Hq, D) of flash-attn-4's own kernel, no block mask: causal, within a window of
    `window` keys when set (no sinks)."""
    if sink:
        raise ValueError("flash-attn-4's own window has no sink tokens")
    from flash_attn.cute import flash_attn_func
    size = (None, None) if window is None else (window - 1, 0)

    def call(q, k, v):
        out = flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v)), softmax_scale=q.shape[-1] ** -0.5,
                              causal=True, window_size=size)
        return out[0] if isinstance(out, tuple) else out
    return call


def check_error(make_call: Callable, window, sink, hq, hkv, d, dtype, device, n=CHECK_TOKENS) -> float:
    """Largest ||x - ref|| / ||ref|| over the output and the gradients of q, k, v, against float64 dense attention;
    `make_call(window, sink, n, device)` gives the kernel under test (like `backend_call` without its name)."""
    q, k, v = _qkv(n, hq, hkv, d, dtype, device, grad=True)
    x = _inputs(n, window, sink, device)
    out = make_call(window, sink, n, device)(q, k, v)
    d_out = torch.randn(out.shape, device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(1))
    got = [out.double(), *torch.autograd.grad(out, (q, k, v), d_out)]
    mask = dense_mask(x.q_pos, x.k_pos, x.prompt_len, window, sink, x.kind)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    kk, vv = (t.repeat_interleave(hq // hkv, 1) for t in (k64, v64))
    ref = F.scaled_dot_product_attention(q64, kk, vv, attn_mask=mask, scale=d ** -0.5).transpose(1, 2)
    want = [ref, *torch.autograd.grad(ref, (q64, k64, v64), d_out.double())]
    return max(relative_error(a, b) for a, b in zip(got, want))


CAUSAL_KERNELS = {"fa_causal": None, "flash_causal": SDPBackend.FLASH_ATTENTION,
                  "cudnn_causal": SDPBackend.CUDNN_ATTENTION}  # None: SDPA's own choice
# every kernel the job can time (--kernels): causal ones, then SWAA backends and FA4's own window
KERNELS = (*CAUSAL_KERNELS, "flex_causal", "fa4_causal", "fa4_native_causal", "flash", "cudnn", "fa4", "fa4_flex",
           "flex", "fa4_native")


def sdpa_choice(q, k, v) -> str:
    """Name of the kernel SDPA picks by itself for causal attention on these inputs."""
    return SDPBackend(torch._fused_sdp_choice(q, k, v, None, 0.0, True)).name


def _causal_cases(q, kk, vv, dout) -> list[tuple]:
    """(name, None, 0, fwd, fwd_bwd, None) of causal SDPA, as chosen by SDPA and with each forced kernel."""
    cases = []
    for name, kernel in CAUSAL_KERNELS.items():
        ctx = functools.partial(sdpa_kernel, kernel) if kernel is not None else contextlib.nullcontext

        def fwd(ctx=ctx):
            with ctx(), torch.no_grad():
                return F.scaled_dot_product_attention(q, kk, vv, is_causal=True)

        def fwd_bwd(ctx=ctx):
            with ctx():
                F.scaled_dot_product_attention(q, kk, vv, is_causal=True).transpose(1, 2).backward(dout)
        cases.append((name, None, 0, fwd, fwd_bwd, None))
    return cases


def _swaa_case(make_call: Callable, tune: dict | None, window: int | None, sink: int, q, k, v, dout,
               label: str) -> tuple:
    """(label, window, sink, fwd, fwd_bwd, float64 check error) of one kernel: `make_call` as in `check_error`,
    run within flex `tune` (kernel_options plus an optional compile_mode) when given."""
    tune = dict(tune or {})
    ctx = functools.partial(flex_tuning, tune, tune.pop("compile_mode", None)) if tune else contextlib.nullcontext
    try:
        call = make_call(window, sink, q.shape[2], q.device)
        with ctx():
            err = check_error(make_call, window, sink, q.shape[1], k.shape[1], q.shape[-1], q.dtype, q.device)
    except Exception:  # a crash is a failed check: reported, not timed, the other kernels still run
        log.exception("%s W=%s S=%s: correctness check raised", label, window, sink)
        call, err = None, float("nan")

    def fwd():
        with ctx(), torch.no_grad():
            return call(q, k, v)

    def fwd_bwd():
        with ctx():
            call(q, k, v).backward(dout)

    return label, window, sink, fwd, fwd_bwd, err


def bench(length: int, window: int, sinks: list[int], hq=32, hkv=8, d=128, dtype=torch.bfloat16,
          flex_tunings: list[dict] = (), repeats: int = 10, kernels: tuple[str, ...] = KERNELS,
          device: torch.device = torch.device("cuda")) -> list[dict]:
    """Time causal SDPA, Triton flex's causal kernel (and FA4's where flash-attn-4 runs), then flash, cudnn (when
    nvidia-cudnn-frontend is installed), fa4, fa4_flex, flex (once per entry of `flex_tunings`: kernel_options plus an
    optional compile_mode) and, without sinks, FA4's own window at each sink count, each where named in `kernels`;
    SWA rows get their time over (visible-pair share x each causal kernel's)."""
    rows = []
    q, k, v = _qkv(length, hq, hkv, d, dtype, device, grad=True)
    kk, vv = (t.detach().repeat_interleave(hq // hkv, 1).requires_grad_() for t in (k, v))
    dout = torch.randn(1, length, hq, d, device=device, dtype=dtype)
    cases = [c for c in _causal_cases(q, kk, vv, dout) if c[0] in kernels]
    fa4 = fa4_unavailable() is None
    flex = functools.partial(backend_call, "flex")
    # Triton flex with a causal block mask: the rate per pair a Triton kernel of flex's template reaches without a band
    if "flex_causal" in kernels:
        cases.append(_swaa_case(flex, None, None, 0, q, k, v, dout, label="flex_causal"))
    if fa4:  # FlashAttention-4's causal kernel: on flex's FLASH backend with a causal block mask, and its own
        if "fa4_causal" in kernels:
            cases.append(_swaa_case(flex, FA4_FLEX, None, 0, q, k, v, dout, label="fa4_causal"))
        if "fa4_native_causal" in kernels:
            cases.append(_swaa_case(fa4_native_call, None, None, 0, q, k, v, dout, label="fa4_native_causal"))
    # (label, kernel, flex tuning); 'fa4_flex' = flex's block mask on FA4 kernels, forward and backward
    cudnn = importlib.util.find_spec("cudnn") is not None
    variants = [("flash", functools.partial(backend_call, "flash"), None)] \
        + [("cudnn", functools.partial(backend_call, "cudnn"), None)] * cudnn \
        + [("fa4", functools.partial(backend_call, "fa4"), None), ("fa4_flex", flex, FA4_FLEX)] * fa4 \
        + [(f"flex {json.dumps(t)}" if flex_tunings else "flex", flex, t) for t in (flex_tunings or [{}])]
    variants = [variant for variant in variants if variant[0].split()[0] in kernels]
    for sink in sinks:
        for label, make_call, tune in variants:
            cases.append(_swaa_case(make_call, tune, window, sink, q, k, v, dout, label))
        if fa4 and sink == 0 and "fa4_native" in kernels:  # FA4's own window, no block mask (it has no sink tokens)
            cases.append(_swaa_case(fa4_native_call, None, window, 0, q, k, v, dout, label="fa4_native"))
    for name, w, s, fwd, fwd_bwd, err in cases:
        if err is not None and not err < TOLERANCE:
            log.error("%s W=%s S=%s failed the correctness check (rel. error %.2e): not timed", name, w, s, err)
            rows.append({"kernel": name, "window": w, "sink": s, "rel_error": err, "status": "FAILED"})
            continue
        pairs = visible_pairs(length, w, s)
        flops = 4 * pairs * d * hq
        try:
            times = {**min_median("fwd_ms", warm_then_time(fwd, device, repeats, WARMUPS)),
                     **min_median("fwd_bwd_ms", warm_then_time(fwd_bwd, device, repeats, WARMUPS))}
        except RuntimeError as e:  # a forced SDPA kernel that cannot take these inputs
            log.warning("%s: not timed (%s)", name, e)
            rows.append({"kernel": name, "window": w, "sink": s, "rel_error": err, "status": "UNSUPPORTED"})
            continue
        rows.append({"kernel": name, "window": w, "sink": s, "rel_error": err, "status": "ok", **times,
                     "fwd_tflops": flops / times["fwd_ms"] / 1e9,
                     "fwd_bwd_tflops": 3.5 * flops / times["fwd_bwd_ms"] / 1e9, "visible_pairs": pairs})
        log.info("%s", rows[-1])
    if not rows:
        raise ValueError(f"--kernels {' '.join(kernels)}: none of them can run here (fa4 needs flash-attn-4 on sm90+, "
                         "cudnn nvidia-cudnn-frontend)")
    add_proportional(rows, visible_pairs(length, None, 0))
    for r in rows:  # which kernel SDPA's own choice ran, on its row only
        if r["kernel"] == "fa_causal":
            r["sdpa_choice"] = sdpa_choice(q, kk, vv)
    return rows


def add_proportional(rows: list[dict], causal_pairs: int) -> None:
    """Each SWA row's forward (and forward+backward) time over (its visible pairs / causal pairs) x each timed causal
    kernel's: 1.0 means no efficiency lost to sparsity against that kernel."""
    causal = [r for r in rows if r["window"] is None and r["status"] == "ok"]
    for r in rows:
        if r["window"] is not None and r["status"] == "ok":
            share = r["visible_pairs"] / causal_pairs
            for key in ("fwd", "fwd_bwd"):
                r[f"{key}_vs_proportional"] = {c["kernel"]: r[f"{key}_ms"] / (share * c[f"{key}_ms"]) for c in causal}


def markdown(rows: list[dict], meta: dict) -> str:
    """The kernel table (times: min / median of the repeats), then one line of metadata."""
    causal = [r["kernel"] for r in rows if r["window"] is None and r["status"] == "ok"]
    ratios = [(key, c) for key in ("fwd", "fwd_bwd") for c in causal]
    head = ("| kernel | W | S | rel. error vs fp64 (max of out, dq, dk, dv) | fwd ms min / median | fwd TFLOP/s | "
            "fwd+bwd ms min / median | fwd+bwd TFLOP/s | "
            + " | ".join(f"{key.replace('_', '+')} / proportional {c}" for key, c in ratios) + " |\n"
            + "|---" * (8 + len(ratios)) + "|")
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    times = lambda r, k: "n/a" if k not in r else f"{r[k + '_min']:.2f} / {r[k]:.2f}"  # noqa: E731
    lines = [head] + [
        f"| {r['kernel']} | {r['window'] or 'full'} | {r['sink']} | {fmt(r['rel_error'], '.1e')} | "
        f"{times(r, 'fwd_ms')} | {fmt(r.get('fwd_tflops'), '.0f')} | {times(r, 'fwd_bwd_ms')} | "
        f"{fmt(r.get('fwd_bwd_tflops'), '.0f')} | "
        + " | ".join(fmt(r.get(f"{key}_vs_proportional", {}).get(c), ".2f") for key, c in ratios) + " |"
        for r in rows]
    return "\n".join(lines) + "\n\n" + ", ".join(f"{k}: {v}" for k, v in meta.items())


def _tunings(text: str) -> list[dict]:
    try:
        tunings = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--flex-tunings: invalid JSON ({e})") from e
    if not isinstance(tunings, list) or not all(isinstance(t, dict) for t in tunings):
        raise argparse.ArgumentTypeError(f"--flex-tunings: expected a JSON list of objects, got {text!r}")
    return tunings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--length", type=int_at_least(1), default=32768)
    parser.add_argument("--window", type=int_at_least(1), default=2048)
    parser.add_argument("--sinks", type=int_at_least(0), nargs="+", default=[0, 64])
    parser.add_argument("--flex-tunings", type=_tunings, default=[],
                        help='JSON list of flex variants to time, e.g. \'[{}, {"USE_TMA": true}, '
                             '{"compile_mode": "max-autotune-no-cudagraphs"}]\': FlexKernelOptions plus compile_mode')
    parser.add_argument("--repeats", type=int_at_least(1), default=10,
                        help=f"timed calls per kernel, after {WARMUPS} warm-ups")
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=KERNELS,
                        help="time only these (default: all; flash-attn-4's and cuDNN's where installed)")
    parser.add_argument("--out", default=None, help="write rows and metadata as JSON here")


def check_args(args: argparse.Namespace) -> None:
    """The job needs a CUDA GPU (its options are checked by argparse) and a file path for --out."""
    check_output_path(args.out, "--out")
    if not torch.cuda.is_available():
        raise ValueError("the kernels job needs a CUDA GPU; torch.cuda.is_available() is False here")


def main(args: argparse.Namespace) -> None:
    # each flex tuning is a separate compilation; past dynamo's limit flex would fall back to its dense eager path
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 8 * len(args.flex_tunings))
    rows = bench(args.length, args.window, args.sinks, flex_tunings=args.flex_tunings, repeats=args.repeats,
                 kernels=tuple(args.kernels))
    meta = run_metadata(torch.device("cuda"), args.command, length=args.length, window=args.window,
                        heads="32q/8kv", head_dim=128, dtype="bf16", repeats=args.repeats, warmups=WARMUPS,
                        useful_flops="visible pairs x 4 x head_dim x heads (fwd+bwd: x3.5)",
                        sdpa_causal_kernel=next((r["sdpa_choice"] for r in rows if "sdpa_choice" in r), None))
    print(markdown(rows, {k: v for k, v in meta.items() if k != "command"}))
    write_results(args.out, meta, rows)
