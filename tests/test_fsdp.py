"""FSDP (CUDA only: Lightning refuses FSDP on a CPU accelerator): the same losses and trainable weights as the default
strategy, checkpoints with the same keys, and an exact resume from an FSDP `last.ckpt`."""

import pytest
import torch
from test_ddp import STEPS, fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_fsdp_matches_the_default_strategy_and_resumes_exactly(tmp_path):
    plain_losses, plain_weights = fit(tmp_path / "plain", devices=1, batch_size=4, accelerator="gpu")
    fsdp_losses, fsdp_weights = fit(tmp_path / "fsdp", devices=1, batch_size=4, accelerator="gpu", strategy="fsdp")
    assert len(plain_losses) == STEPS and fsdp_losses == pytest.approx(plain_losses, rel=1e-4)
    assert fsdp_weights.keys() == plain_weights.keys()
    for name in plain_weights:
        torch.testing.assert_close(fsdp_weights[name], plain_weights[name], rtol=1e-4, atol=1e-6, msg=name)

    root = tmp_path / "resumed"
    first, _ = fit(root, devices=1, batch_size=4, accelerator="gpu", strategy="fsdp", max_steps=1)
    rest, resumed_weights = fit(root, devices=1, batch_size=4, accelerator="gpu", strategy="fsdp",
                                ckpt_path=root / "ckpt" / "last.ckpt", version=1)
    assert first + rest == pytest.approx(fsdp_losses, rel=1e-4)
    for name in fsdp_weights:
        torch.testing.assert_close(resumed_weights[name], fsdp_weights[name], rtol=1e-4, atol=1e-6, msg=name)
