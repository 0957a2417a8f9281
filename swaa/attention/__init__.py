"""SWAA attention backends, one function each with transformers' attention signature."""

from swaa.attention.auto import auto_attention
from swaa.attention.chunked import chunked_attention
from swaa.attention.cudnn import cudnn_attention_fn
from swaa.attention.fa4 import fa4_attention_fn
from swaa.attention.flash import flash_attention_fn
from swaa.attention.flex import flex_attention_fn
from swaa.attention.reference import reference_attention

# "auto" is the CUDA router; on other devices apply_swaa resolves "auto" to "chunked"
BACKENDS = {"reference": reference_attention, "chunked": chunked_attention, "flex": flex_attention_fn,
            "fa4": fa4_attention_fn, "flash": flash_attention_fn, "cudnn": cudnn_attention_fn,
            "auto": auto_attention}
