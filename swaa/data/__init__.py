"""Training data: local SFT chat files, synthetic long-context tasks, and self-distillation."""

import importlib

_MODULES = {"SFTDataModule": "swaa.data.sft", "SyntheticDataModule": "swaa.data.synthetic"}

__all__ = list(_MODULES)


def __getattr__(name: str):
    """Import a data module on first use, so `swaa.data.chat` (the loss, the benchmarks) loads without `datasets`."""
    if name not in _MODULES:
        raise AttributeError(f"module 'swaa.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name]), name)
