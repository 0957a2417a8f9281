"""swaa.bench.train on CPU with a tiny shape: the step timing, warm-up per config and length, the backend check, the
job's rows (the real benchmark runs on a GPU)."""

import json
import math

import pytest
import torch
from peft import PeftModel

import swaa.bench.train as bench_train
from swaa import SWAAConfig, apply_swaa
from swaa.attention import BACKENDS
from swaa.bench.__main__ import main
from swaa.bench.train import build, step_time

SHAPE, CPU = "tiny:qwen3:2:128", torch.device("cpu")


@pytest.fixture
def model():
    return build(SHAPE, None, torch.float32, CPU, max_positions=1024)


def test_build_adds_lora_and_checkpointing(model):
    assert isinstance(model, PeftModel) and model.training and model.get_base_model().is_gradient_checkpointing
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    targets = {n.split(".lora_")[0].split(".")[-1] for n in trainable}
    assert targets == {"q_proj", "k_proj", "v_proj"}  # LoRASettings' defaults


def test_step_time_trains_and_profiles(model):
    apply_swaa(model.get_base_model(), SWAAConfig(window=8, sink=2, fa_decode=True), backend="chunked")
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    result = step_time(model, 64, 2, CPU, profile=True)
    after = [p for p in model.parameters() if p.requires_grad]
    assert len(result["step_s_runs"]) == 2 and 0 < result["step_s_min"] <= result["step_s"]
    assert math.isfinite(result["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(after, before))  # the optimizer stepped
    assert result["profile"]["matmul"] > 0 and result["profile"]["attention"] > 0
    assert step_time(model, 64, 1, CPU)["profile"] is None


def test_train_job_warms_up_every_config_and_length(tmp_path, monkeypatch):
    warm = []
    real = bench_train.warm_then_time
    monkeypatch.setattr(bench_train, "warm_then_time",
                        lambda fn, device, repeats, warmups: warm.append(warmups) or real(fn, device, repeats, warmups))
    out = tmp_path / "train.json"
    main(["train", "--device", "cpu", "--shape", SHAPE, "--lengths", "48,64", "--window", "16", "--sink", "2",
          "--steps", "2", "--backends", "chunked", "--out", str(out)])
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["config"], r["length"]) for r in rows] == [(c, n) for n in (48, 64)
                                                          for c in ("fa", "swa_all_fad", "swa_half_fad")]
    assert warm == [bench_train.WARMUP_STEPS] * len(rows)
    for r in rows:
        assert len(r["step_s_runs"]) == 2 and r["step_s_min"] <= r["step_s"] and r["peak_gib"] is None
        assert r["speedup"] == pytest.approx(next(f["step_s"] for f in rows if f["config"] == "fa"
                                                  and f["length"] == r["length"]) / r["step_s"])
    assert data["meta"]["check_rel_diff"]["chunked"] < 1e-4 and data["meta"]["lora"]["rank"] == 16


def zero_attention(module, query, key, value, attention_mask=None, **kwargs):
    """A broken backend: attention output all zeros, (B, T, H, D)."""
    return torch.zeros_like(query).transpose(1, 2).contiguous(), None


def test_a_backend_failing_the_check_is_not_timed(monkeypatch, model):
    monkeypatch.setitem(BACKENDS, "flex", zero_attention)
    errors = bench_train.checked_backends(model, ["chunked", "flex"], CPU)
    assert errors["chunked"] < bench_train.CHECK_TOLERANCE < errors["flex"]
    with pytest.raises(SystemExit, match="every backend failed"):
        main(["train", "--device", "cpu", "--shape", SHAPE, "--lengths", "32", "--backends", "flex"])
