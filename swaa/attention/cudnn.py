"""cuDNN backend (CUDA, optional `nvidia-cudnn-frontend`): the flash backend's split calls and log-sum-exp merge of
the sink keys, with the forward calls of one sequence on cuDNN's SDPA kernel with a diagonal band (the window) and
everything else (ragged batches, the backward) on FlashAttention's."""

from __future__ import annotations

import functools

import torch

from swaa.attention.flash import flash_attention_fn, flash_varlen, flash_varlen_backward


@functools.cache
def cudnn_ops():
    """torch.ops.cudnn (sdpa_fwd), registered by importing the frontend's torch module."""
    try:
        import cudnn.sdpa.fwd.torch_op  # noqa: F401
    except ImportError as e:
        raise RuntimeError("backend 'cudnn' needs the optional package nvidia-cudnn-frontend "
                           "(pip install nvidia-cudnn-frontend); use 'flex' or 'flash'") from e
    return torch.ops.cudnn


def _band(window_left: int | None) -> dict:
    """cuDNN's mask for a causal `flash_varlen` call: bottom-right aligned, and cuDNN's left bound counts the visible
    keys including the query's own (FlashAttention's window_left + 1)."""
    return {"is_causal": True, "causal_bottom_right": True,
            "window_left": -1 if window_left is None else window_left + 1}


def _bhsd(t: torch.Tensor) -> torch.Tensor:
    """Packed (T, H, D) of one sequence -> a (1, H, T, D) view."""
    return t.permute(1, 0, 2)[None]


def cudnn_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale: float, window_left: int | None,
                 causal: bool = True):
    """`flash_varlen`'s contract on cuDNN for the window and causal calls of one sequence: q (Tq, Hq, D),
    k/v (Tk, Hkv, D) -> out (Tq, Hq, D), lse (Hq, Tq); other calls go to `flash_varlen`."""
    # On the H200 (BENCHMARKS.md): after cuDNN's ragged (THD) forward of a decode step over 3 sequences, the FA
    # backward gave gradients 30x too large; and with the unmasked sink-key call on cuDNN, the sinks added 2.25 ms
    # at 32k against 1.47 ms on FA.
    if len(cu_q) != 2 or not causal:
        return flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale, window_left, causal)
    out, lse = cudnn_ops().sdpa_fwd(_bhsd(q), _bhsd(k), _bhsd(v), scale, **_band(window_left),
                                    return_lse=True)
    return out[0].permute(1, 0, 2), lse[0, :, :, 0]


# backward: FlashAttention's kernel per call, given the merged out and LSE (exact whichever kernel ran the forward).
# cuDNN's own band backward measured 5.7x slower than it at 32k (BENCHMARKS.md).
cudnn_attention_fn = functools.partial(flash_attention_fn, backend="cudnn", varlen=cudnn_varlen,
                                       varlen_bwd=flash_varlen_backward)
