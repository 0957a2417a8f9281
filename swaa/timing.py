"""The one timer: milliseconds of a call (CUDA events on GPU, perf_counter elsewhere), untimed warm-up calls before the
timed ones, and their min / median summary."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


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


def warm_then_time(fn: Callable[[], Any], device: torch.device, repeats: int, warmups: int = 1) -> list[float]:
    """Milliseconds of `repeats` calls of fn(), after `warmups` untimed calls (compilation, allocator growth)."""
    if repeats < 1 or warmups < 1:
        raise ValueError(f"repeats={repeats}, warmups={warmups}: expected both >= 1")
    for _ in range(warmups):
        fn()
    return [timed_ms(fn, device)[0] for _ in range(repeats)]


def min_median(name: str, values: list[float]) -> dict[str, Any]:
    """`name` (the median), `name_min` and every value as `name_runs`."""
    return {name: statistics.median(values), f"{name}_min": min(values), f"{name}_runs": list(values)}
