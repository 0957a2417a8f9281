"""SWAA: sliding-window attention adaptation for Hugging Face causal LMs."""

from swaa.config import SWAAConfig, load_presets

__all__ = ["SWAAConfig", "load_presets"]
