"""Backend 'auto' with FlexAttention's FlashAttention-4 backend (`kernel_options={"BACKEND": "FLASH"}`, CuTe DSL
kernels from `flash-attn-4`) as its flex kernel for SWA prefill: the block mask and mask_mod of 'flex', band and sink
tiles in one pass. Calls that need gradients use FA4's backward at the head dimensions where it passed the float64
gradient check on sm90 (TRUSTED_BACKWARD_HEAD_DIMS) and the Triton flex kernel at others: at head dimension 16 it
failed (4.0.0b36, 4.0.0b40; BENCHMARKS.md). Other calls are routed as in 'auto'.

Needs CUDA compute capability >= 9.0 (Hopper, Blackwell) and `pip install flash-attn-4`.
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from swaa.attention.auto import auto_attention
from swaa.attention.flex import tuning
from swaa.attention.inputs import needs_grad

KERNEL_OPTIONS = {"BACKEND": "FLASH"}
TRUSTED_BACKWARD_HEAD_DIMS = (64, 128)  # test_half_precision_gradients_model_head_dims_cuda passed on sm90


@functools.cache
def fa4_unavailable(device_index: int | None = None) -> str | None:
    """Why the FA4 backend cannot run on this CUDA device, or None when it can."""
    if not torch.cuda.is_available():
        return "it needs a CUDA GPU"
    if importlib.util.find_spec("flash_attn") is None or importlib.util.find_spec("flash_attn.cute") is None:
        return "it needs the flash-attn-4 package (pip install flash-attn-4)"
    major, _ = torch.cuda.get_device_capability(device_index)
    if major < 9:
        return f"it needs compute capability >= 9.0, this GPU has {major}.x"
    return None


def fa4_attention_fn(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Attention with transformers' signature: 'auto' with FlashAttention-4 kernels for its flex calls (with gradients
    only at the trusted head dimensions)."""
    if query.device.type != "cuda":
        raise RuntimeError(f"backend 'fa4' needs a CUDA device, got {query.device}")
    reason = fa4_unavailable(query.device.index)
    if reason is not None:
        raise RuntimeError(f"backend 'fa4' cannot run: {reason}")
    if needs_grad(query, key, value) and query.shape[-1] not in TRUSTED_BACKWARD_HEAD_DIMS:  # Triton flex
        return auto_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    with tuning(KERNEL_OPTIONS):
        return auto_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
