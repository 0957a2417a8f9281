"""Optional fused kernels for a decoder's non-attention work (RMSNorm, rotary, SwiGLU MLP), applied alike to FA and
SWAA models so that speed ratios stay honest.

'liger' uses liger-kernel's Triton kernels: its patches replace functions of the model's transformers module for the
whole process (Liger's design, opt-in here; SWAA's own integration stays patch-free). 'compile' runs each decoder
layer through torch.compile (no patching). 'none' leaves the model as it is.
"""

from __future__ import annotations

import importlib.util
import logging

from transformers import PreTrainedModel

log = logging.getLogger(__name__)
FUSIONS = ("none", "liger", "compile")


def fusion_unavailable(how: str) -> str | None:
    """Why fusion `how` cannot be applied here (a missing package), or None when it can."""
    if how == "liger" and importlib.util.find_spec("liger_kernel") is None:
        return "needs the liger-kernel package, which is not installed (pip install liger-kernel)"
    return None


def fuse(model: PreTrainedModel, how: str) -> PreTrainedModel:
    """Apply fusion `how` (one of FUSIONS) to `model` in place, before apply_swaa; returns the model."""
    if how not in FUSIONS:
        raise ValueError(f"fuse={how!r}: expected one of {', '.join(FUSIONS)}")
    if (reason := fusion_unavailable(how)) is not None:
        raise ValueError(f"fuse={how!r} {reason}")
    if how == "liger":
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        # the loss stays ours (swaa.loss computes logits only for supervised rows)
        _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                        fused_linear_cross_entropy=False)
    elif how == "compile":
        for layer in model.base_model.layers:
            layer.compile()
    if how != "none":
        log.info("fused the non-attention work of %s with %s", type(model).__name__, how)
    return model
