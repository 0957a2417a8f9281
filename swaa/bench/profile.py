"""Timing one call, and where its time goes: under torch.profiler, kernel time summed into categories, plus idle
(launch) gaps.

On CUDA the categories sum device kernels; on CPU they sum the self time of the aten operators.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

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


def timed_ms(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Milliseconds of fn() (CUDA events on GPU, perf_counter elsewhere) and its result."""
    if device.type != "cuda":
        start = time.perf_counter()
        result = fn()
        return (time.perf_counter() - start) * 1e3, result
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    result = fn()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end), result
