"""SWAA: sliding-window attention adaptation for Hugging Face causal LMs."""

from swaa.config import SWAAConfig, load_presets
from swaa.integration import apply_swaa, prompt_lengths, remove_swaa, swaa_disabled

__all__ = ["SWAAConfig", "apply_swaa", "load_presets", "prompt_lengths", "remove_swaa", "swaa_disabled"]
