"""swaa.bench.common: relative error, shapes and random models, metadata."""

import argparse
import importlib.metadata
import importlib.util

import pytest
import torch

from swaa.bench.common import (check_fusion, installed_versions, int_at_least, int_list, model_config,
                               random_model, relative_error, run_metadata, shape_fields)

CPU = torch.device("cpu")


def test_relative_error():
    want = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert relative_error(torch.tensor([3.0, 4.0]), want) == 0.0
    assert relative_error(torch.tensor([3.0, 9.0], dtype=torch.bfloat16), want) == pytest.approx(1.0)


def test_shapes_and_tiny_specs():
    qwen = model_config("qwen3-4b")
    assert (qwen.model_type, qwen.num_hidden_layers, qwen.hidden_size, qwen.head_dim) == ("qwen3", 36, 2560, 128)
    assert shape_fields("smollm2")["num_key_value_heads"] == 3
    assert model_config("tiny:llama:3:64", num_hidden_layers=1).num_hidden_layers == 1
    with pytest.raises(ValueError, match="shape='qwen9'.*tiny:"):
        model_config("qwen9")
    with pytest.raises(ValueError, match=r"^shape='tiny:llama:0:64': need layers >= 1"):  # both name the same argument
        model_config("tiny:llama:0:64")


def test_random_model_is_the_same_for_the_same_seed():
    a, b = (random_model("tiny:qwen3:2:64", torch.bfloat16, CPU, seed=3) for _ in range(2))
    c = random_model("tiny:qwen3:2:64", torch.bfloat16, CPU, seed=4)
    assert next(a.parameters()).dtype == torch.bfloat16 and not a.training
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_run_metadata():
    meta = run_metadata(CPU, ["python", "-m", "swaa.bench", "model"], dtype="fp32")
    assert meta["gpu"] is None and meta["timer"] == "perf_counter" and meta["dtype"] == "fp32"
    assert {"torch", "transformers", "python", "packages", "date", "command"} <= set(meta)


def test_installed_versions_names_what_is_installed_and_leaves_out_the_rest():
    """The kernel packages a run used (flash-attn-4 decides fa4's backward) are in its metadata."""
    assert installed_versions(("torch", "no-such-distribution")) == {"torch": importlib.metadata.version("torch")}


def test_int_at_least_and_int_list_reject_out_of_range_and_empty():
    assert int_at_least(0)("0") == 0 and int_list("32, 64,") == [32, 64]
    for parse, bad in ((int_at_least(1), "0"), (int_at_least(0), "-1"), (int_at_least(1), "x"), (int_list, ","),
                       (int_list, "32,0"), (int_list, "a")):
        with pytest.raises(argparse.ArgumentTypeError, match="expected"):
            parse(bad)


def test_check_fusion(monkeypatch):
    for how in ("none", "compile"):
        check_fusion(how)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "liger_kernel" else find_spec(name, *a, **k))
    with pytest.raises(ValueError, match=r"^--fuse liger: needs the liger-kernel package, which is not installed"):
        check_fusion("liger")
