"""swaa.timing: warm-up before the timed calls, the timer, min/median."""

import pytest
import torch

from swaa.timing import min_median, timed_ms, warm_then_time

CPU = torch.device("cpu")

def test_warm_then_time_runs_the_warmups_untimed_first():
    calls = []
    times = warm_then_time(lambda: calls.append(len(calls)), CPU, repeats=3, warmups=2)
    assert calls == [0, 1, 2, 3, 4] and len(times) == 3 and all(t >= 0 for t in times)
    for bad in ({"repeats": 0}, {"warmups": 0}):
        with pytest.raises(ValueError, match="expected both >= 1"):
            warm_then_time(lambda: None, CPU, **{"repeats": 1, "warmups": 1, **bad})

def test_timed_ms_returns_the_result():
    ms, result = timed_ms(lambda: 42, CPU)
    assert result == 42 and ms >= 0

def test_min_median():
    assert min_median("x", [3.0, 1.0, 2.0, 10.0]) == {"x": 2.5, "x_min": 1.0, "x_runs": [3.0, 1.0, 2.0, 10.0]}
