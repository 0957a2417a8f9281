"""SWAA: sliding-window attention adaptation for Hugging Face causal LMs."""

from swaa.config import SWAAConfig, load_presets
from swaa.integration import apply_swaa, prompt_lengths, remove_swaa, swaa_disabled
from swaa.static_decode import StaticDecoder

__all__ = ["SWAAConfig", "StaticDecoder", "apply_swaa", "load_presets", "prompt_lengths", "remove_swaa",
           "swaa_disabled"]
