"""Training data: local SFT chat files, synthetic long-context tasks, and self-distillation."""

from swaa.data.sft import SFTDataModule
from swaa.data.synthetic import SyntheticDataModule

__all__ = ["SFTDataModule", "SyntheticDataModule"]
