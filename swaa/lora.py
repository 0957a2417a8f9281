"""LoRA settings, wrapping a Hugging Face causal LM with peft adapters (or marking it fully trainable), and
running it with other adapter weights swapped in (a distillation teacher)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator

import torch
from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoRASettings:
    """Low-rank adapters on the attention projections, or full fine-tuning."""

    rank: int = 16
    """r: rank of each adapter."""
    alpha: float = 32
    """Scaling numerator: the adapter output is scaled by alpha / rank (alpha / sqrt(rank) with rslora)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(rank)."""
    target_modules: list[str] | str = dataclasses.field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    """Names of the linear layers that get adapters, or 'all-linear'."""
    full_finetune: bool = False
    """No adapters: every parameter of the model is trained."""

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ValueError(f"LoRASettings.rank={self.rank!r}: expected an int >= 1")
        if not self.alpha > 0:
            raise ValueError(f"LoRASettings.alpha={self.alpha!r}: expected a number > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRASettings.dropout={self.dropout!r}: expected 0 <= dropout < 1")
        targets = self.target_modules
        if isinstance(targets, str):
            if targets != "all-linear":
                raise ValueError(f"LoRASettings.target_modules={targets!r}: expected 'all-linear' or a list of "
                                 "module names such as ['q_proj', 'v_proj']")
        elif not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(f"LoRASettings.target_modules={targets!r}: expected a non-empty list of module names")
        else:
            self.target_modules = list(targets)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def add_lora(model: PreTrainedModel, settings: LoRASettings) -> PreTrainedModel:
    """Wrap `model` with LoRA adapters (base weights frozen); with `full_finetune` make every parameter trainable."""
    if settings.full_finetune:
        model.requires_grad_(True)
        return model
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        use_rslora=settings.rslora, target_modules=settings.target_modules, task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, config)
    except ValueError as e:
        raise ValueError(f"LoRASettings.target_modules={settings.target_modules!r} do not fit "
                         f"{type(model).__name__}: {e}") from e
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("LoRA r=%d on %s: %d trainable of %d parameters", settings.rank, settings.target_modules, trainable, total)
    return model


@contextlib.contextmanager
def swapped_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Run with `weights` (parameter name -> tensor) as those parameters' values; the current values come back after.
    For forward passes without gradients only (e.g. a teacher's)."""
    params = dict(model.named_parameters())
    current = {name: params[name].data for name in weights}
    try:
        for name, value in weights.items():
            params[name].data = value
        yield
    finally:
        for name, value in current.items():
            params[name].data = value
