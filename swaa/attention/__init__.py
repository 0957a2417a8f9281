"""SWAA attention backends, one function each with transformers' attention signature."""

from swaa.attention.auto import auto_attention
from swaa.attention.chunked import chunked_attention
from swaa.attention.flash import flash_attention_fn
from swaa.attention.flex import flex_attention_fn
from swaa.attention.reference import reference_attention

BACKENDS = {"reference": reference_attention, "chunked": chunked_attention, "flex": flex_attention_fn,
            "flash": flash_attention_fn, "auto": auto_attention}  # "auto": the CUDA router; on CPU apply_swaa picks "chunked"
