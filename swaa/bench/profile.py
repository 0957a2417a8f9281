"""Profile: where a prefill's and a decode step's time goes per SWAA configuration, in kernel categories.

torch.profiler after one untimed warm-up per length: device kernels on CUDA, aten operators' self time on CPU; what
no kernel covers is idle (launch gaps). The configs are checked as in the model job."""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any, Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from transformers import DynamicCache, PreTrainedModel

from swaa.bench.common import DTYPES, dtype_name, write_results
from swaa.bench.model import (add_model_arguments, check_args as check_model_args, decode, forward,
                              markdown_meta_line, measure_once, model_metadata, parse_configs, random_ids, run_configs)
from swaa.files import write_atomic
from swaa.static_decode import StaticDecoder

# first match wins: index/copy kernels often carry "elementwise" in their names too
CATEGORIES = (
    ("attention", ("flash", "fmha", "attention", "flex", "triton_tem", "sdpa", "softmax")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "aten::mm", "aten::addmm", "aten::bmm", "matmul",
                "aten::linear")),
    ("copy/index", ("copy", "cat", "index", "gather", "scatter", "fill", "memcpy", "memset", "where", "arange",
                    "nonzero", "masked")),
    ("elementwise/norm/rotary", ("elementwise", "reduce", "vectorized", "triton_", "mul", "add", "pow", "rsqrt",
                                 "silu", "mean", "norm", "neg", "exp", "sum", "div", "sub", "sin", "cos", "to_copy")),
)
IDLE = "idle (launch gaps)"


def category(name: str) -> str:
    """The category of one kernel or operator name."""
    low = name.lower()
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), "other")


def time_breakdown(fn: Callable[[], Any], device: torch.device) -> tuple[dict[str, float], Any]:
    """Run fn() once under the profiler: (wall ms, ms per category and the wall time no kernel covered; fn's result)."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        result = fn()
        if cuda:
            torch.cuda.synchronize(device)
    wall = (time.perf_counter() - start) * 1e3
    out = {"wall_ms": wall, **category_ms(prof.key_averages(), cuda)}
    out[IDLE] = max(0.0, wall - sum(v for k, v in out.items() if k != "wall_ms"))
    return out, result


def category_ms(events, cuda: bool) -> dict[str, float]:
    """Milliseconds per category: the GPU kernels themselves on CUDA (an operator's self device time is its kernels'
    time again, so operators are skipped), the aten operators' self time on CPU."""
    out = {cat: 0.0 for cat, _ in CATEGORIES} | {"other": 0.0}
    for evt in events:
        if cuda and evt.device_type == DeviceType.CUDA:
            us = evt.self_device_time_total
        elif not cuda and evt.key.startswith("aten::"):
            us = evt.self_cpu_time_total
        else:
            continue
        out[category(evt.key)] += us / 1e3
    return out


def profile_cell(model: PreTrainedModel, length: int, static: bool, decode_tokens: int) -> dict[str, Any]:
    """After an untimed warm-up run at this length: where one prefill's and one decode step's time goes (decode
    averaged over its steps), and one StaticDecoder step's if `static` (after the step that captures the graph)."""
    device = model.device
    ids = random_ids(model.config.vocab_size, length, device, seed=length)
    measure_once(model, ids, decode_tokens, static)  # warm-up, not reported
    cache = DynamicCache(config=model.config)
    prefill, logits = time_breakdown(lambda: forward(model, ids, cache, keep=1), device)
    decode_total, logits = time_breakdown(lambda: decode(model, logits, cache, decode_tokens), device)
    out = {"prefill": prefill, "decode": {k: v / decode_tokens for k, v in decode_total.items()}}
    if static:
        with StaticDecoder(model, cache, decode_tokens + 1) as decoder:
            logits = decoder.greedy(logits, 1)
            total, _ = time_breakdown(lambda: decoder.greedy(logits, decode_tokens), device)
        out["static decode"] = {k: v / decode_tokens for k, v in total.items()}
    return {"profile": out}


def breakdown_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the profiled rows: ms per category for a prefill and for one decode step."""
    cats = [cat for cat, _ in CATEGORIES] + ["other", IDLE]
    lines = ["| config | length | phase | wall | " + " | ".join(cats) + " |", "|" + "---|" * (4 + len(cats))]
    for r in rows:
        for phase, prof in r.get("profile", {}).items():
            lines.append(f"| {r['config']} | {r['length']} | {phase} | {prof['wall_ms']:.1f} | "
                         + " | ".join(f"{prof[c]:.1f}" for c in cats) + " |")
        if r["status"] != "ok":
            lines.append(f"| {r['config']} | {r['length']} | {r['status']} |" + " - |" * (1 + len(cats)))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, decode_tokens=8)


def check_args(args: argparse.Namespace) -> None:
    """The model job's input checks."""
    check_model_args(args)


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    configs = parse_configs(args.configs, args.window, args.sink, args.presets)
    meta = model_metadata(args, configs, device, warmups="1 per config and length")

    def save(rows: list[dict[str, Any]]) -> None:
        write_results(args.out, meta, rows)
        if args.markdown:
            write_atomic(args.markdown, breakdown_table(rows) + "\n\n" + markdown_meta_line(meta))

    rows = run_configs(configs, args.shape, args.lengths,
                       functools.partial(profile_cell, decode_tokens=args.decode_tokens), 2 * args.decode_tokens + 1,
                       DTYPES[dtype_name(args.dtype, device)], device, args.backend, on_config=save,
                       fuse_with=args.fuse)
    print(breakdown_table(rows) + "\n\n" + markdown_meta_line(meta))
