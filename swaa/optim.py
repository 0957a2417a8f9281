"""The optimizer and learning-rate schedule SWAA fine-tuning uses by default; YAML configs may name any others."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

log = logging.getLogger(__name__)
Decay = Literal["cosine", "linear", "constant"]


class AdamW(torch.optim.AdamW):
    """torch.optim.AdamW with this project's defaults: peak lr 2e-4 and no weight decay (torch's: 1e-3, 0.01)."""

    def __init__(self, params: Iterable, lr: float = 2e-4, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def lr_factor(step: int, warmup_steps: int, max_steps: int | None, decay: Decay) -> float:
    """Linear warmup from 0 to 1 over `warmup_steps`, then cosine / linear decay to 0 at `max_steps`, or constant."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if decay == "constant" or step == warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress


class WarmupDecay(LRScheduler):
    """The optimizer's lr times `lr_factor(step)`, stepped once per optimizer step."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 0, max_steps: int | None = None,
                 decay: Decay = "cosine", last_epoch: int = -1):
        """`max_steps`: where the decay reaches 0; None = the trainer's estimated number of steps (SWAAFineTuner sets
        it before the first step)."""
        if warmup_steps < 0 or (max_steps is not None and max_steps < 1):
            raise ValueError(f"WarmupDecay: warmup_steps={warmup_steps} must be >= 0 and max_steps={max_steps} None "
                             f"or >= 1")
        if decay not in ("cosine", "linear", "constant"):
            raise ValueError(f"WarmupDecay.decay={decay!r}: expected cosine, linear or constant")
        self.warmup_steps, self.max_steps, self.decay = warmup_steps, max_steps, decay
        super().__init__(optimizer, last_epoch)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at the saved step with this run's warmup_steps, max_steps and decay (a resume with a larger
        trainer.max_steps decays to 0 at the new end, not at the saved one and then at lr 0); the optimizer's lr is
        set for the next step."""
        settings = {"warmup_steps": self.warmup_steps, "max_steps": self.max_steps, "decay": self.decay}
        super().load_state_dict(state_dict)
        changed = {k: (getattr(self, k), v) for k, v in settings.items() if getattr(self, k) != v}
        if changed:
            log.info("WarmupDecay: resuming at step %d with %s", self.last_epoch,
                     ", ".join(f"{k}={new} (the checkpoint's: {old})" for k, (old, new) in changed.items()))
        self.__dict__.update(settings)
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        factor = lr_factor(self.last_epoch, self.warmup_steps, self.max_steps, self.decay)
        return [base * factor for base in self.base_lrs]
