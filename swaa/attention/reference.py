"""Reference backend: the dense boolean mask of swaa.masks through PyTorch SDPA. Any device, any shape."""

from __future__ import annotations

import torch.nn.functional as F

from swaa.attention.inputs import layer_inputs
from swaa.masks import dense_mask


def reference_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0, **kwargs):
    """Attention with transformers' signature; q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D) -> (B, Lq, Hq, D)."""
    x = layer_inputs(module, query, key)

    def build():
        mask = dense_mask(x.q_pos, x.k_pos, x.prompt_len, x.window, x.sink, x.kind)
        return mask | (x.q_pos < 0)[:, None, :, None]  # padding queries attend to everything: finite, ignored

    mask = x.cached("dense", build)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                         enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None
