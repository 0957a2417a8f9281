"""A progress bar that counts the optimizer steps of the run (n/max_steps), so it reads the same after a resume."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, but the training bar shows `Epoch E, step n/max_steps` (Lightning's own shows batches of
    the epoch: `Epoch 0/-2` with max_steps only, `100/49` after a resume mid-epoch)."""

    def on_train_start(self, trainer: L.Trainer, *_: Any) -> None:
        super().on_train_start(trainer)
        self._start_epoch(trainer)  # a resume mid-epoch skips on_train_epoch_start for that epoch

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        self._start_epoch(trainer)

    def _start_epoch(self, trainer: L.Trainer) -> None:
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches)
        bar.set_description(f"Epoch {trainer.current_epoch}, step")
        self._show(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        step = trainer.global_step
        if self.is_enabled and (step % self.refresh_rate == 0 or step == self.train_progress_bar.total):
            self._show(step)
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def _show(self, step: int) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.n = step
            self.train_progress_bar.refresh()
