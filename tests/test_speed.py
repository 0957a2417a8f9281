"""measure_speed: non-negative figures by construction (one monotonic interval each), checked without timing noise."""

import pytest
import torch

from conftest import tiny_model
from swaa.eval.speed import generate_token_ms, measure_speed


@pytest.fixture(scope="module")
def model():
    return tiny_model(vocab_size=256)


@torch.inference_mode()
def test_generate_token_ms_stamps_every_token_in_order(model):
    ms = generate_token_ms(model, torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0)), 5)
    assert len(ms) == 5 and ms == sorted(ms) and ms[0] >= 0


@pytest.mark.parametrize("decode", ["generate", "static"])
def test_measure_speed(model, decode):
    speed = measure_speed(model, None, length=64, new_tokens=4, repeats=2, decode=decode)
    assert set(speed) == {"prefill_ms", "decode_ms_per_token", "decode", "device", "dtype"}
    assert (speed["decode"], speed["device"], speed["dtype"]) == (decode, "cpu", "float32")  # what it depends on
    assert speed["prefill_ms"] >= 0 and speed["decode_ms_per_token"] >= 0  # never a difference of two runs


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="length=0"):
        measure_speed(model, None, length=0)
    with pytest.raises(ValueError, match="decode='fast'"):
        measure_speed(model, None, length=8, decode="fast")
