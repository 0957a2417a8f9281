"""FSDP (CUDA only: Lightning refuses FSDP on a CPU accelerator): from the same initial weights, the same losses and
trainable weights as the default strategy; checkpoints with the same keys; an exact resume from an FSDP `last.ckpt`.

FSDP initialises fresh LoRA A matrices differently from a plain run with the same seed, so the runs compared here
start from one saved set of trainable weights (`init_weights`), which must survive FSDP's wrapping.
"""

import pytest
import torch
from test_ddp import STEPS, fit

from swaa.checkpoints import CheckpointError

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_fsdp_matches_the_default_strategy_and_resumes_exactly(tmp_path):
    fit(tmp_path / "init", devices=1, batch_size=4, accelerator="gpu", max_steps=1)
    init = str(tmp_path / "init" / "ckpt" / "last.ckpt")  # nonzero LoRA A and B
    run = dict(devices=1, batch_size=4, accelerator="gpu", init_weights=init)
    plain_losses, plain_weights = fit(tmp_path / "plain", **run)
    fsdp_losses, fsdp_weights = fit(tmp_path / "fsdp", strategy="fsdp", **run)
    assert len(plain_losses) == STEPS and fsdp_losses == pytest.approx(plain_losses, rel=1e-5)
    assert fsdp_weights.keys() == plain_weights.keys()
    for name in plain_weights:
        torch.testing.assert_close(fsdp_weights[name], plain_weights[name], rtol=1e-4, atol=1e-6, msg=name)

    root = tmp_path / "resumed"
    first, _ = fit(root, strategy="fsdp", max_steps=1, **run)
    rest, resumed_weights = fit(root, strategy="fsdp", ckpt_path=root / "ckpt" / "last.ckpt", version=1, **run)
    assert first + rest == pytest.approx(fsdp_losses, rel=1e-5)
    for name in fsdp_weights:
        torch.testing.assert_close(resumed_weights[name], fsdp_weights[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fsdp_resume_refuses_a_checkpoint_missing_weights(tmp_path):
    """FSDP loads the weights itself (not strictly: checkpoints hold only trainable weights); the key check still
    runs and names the file."""
    root = tmp_path / "run"
    fit(root, devices=1, batch_size=4, accelerator="gpu", strategy="fsdp", max_steps=1)
    checkpoint = torch.load(root / "ckpt" / "last.ckpt", weights_only=True)
    checkpoint["state_dict"].pop(next(iter(checkpoint["state_dict"])))
    torch.save(checkpoint, tmp_path / "partial.ckpt")
    with pytest.raises(CheckpointError, match=r"partial\.ckpt .* 1 missing"):
        fit(root, devices=1, batch_size=4, accelerator="gpu", strategy="fsdp", ckpt_path=tmp_path / "partial.ckpt",
            version=1)
