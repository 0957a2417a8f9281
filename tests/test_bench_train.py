"""bench_train's step timing and profile on CPU with a tiny LoRA model (the benchmark itself needs a GPU)."""

import math

import torch
from peft import LoraConfig, get_peft_model

from conftest import tiny_model
from swaa import SWAAConfig, apply_swaa
from swaa.bench_train import step_time


def test_step_time_trains_and_profiles():
    model = get_peft_model(tiny_model(vocab_size=128, layers=2), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    apply_swaa(model.get_base_model(), SWAAConfig(window=8, sink=2, fa_decode=True), backend="chunked")
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    seconds, loss, breakdown = step_time(model, 64, 1, "cpu", profile=True)
    after = [p for p in model.parameters() if p.requires_grad]
    assert seconds > 0 and math.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))  # the optimizer stepped
    assert breakdown["matmul"] > 0 and breakdown["attention"] > 0 and breakdown["wall_ms"] > 0
    assert step_time(model, 64, 1, "cpu")[2] is None
