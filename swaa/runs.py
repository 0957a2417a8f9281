"""A train.py run's folders: the last checkpoints a new run would write beside, and no log folder for a failed start."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint


def last_checkpoints(trainer: L.Trainer) -> list[Path]:
    """The files `--ckpt_path last` would choose from (last*.ckpt in each ModelCheckpoint's dirpath)."""
    found = []
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
            found += sorted(Path(callback.dirpath).glob(f"{callback.CHECKPOINT_NAME_LAST}*{callback.FILE_EXTENSION}"))
    return found


class DropFailedStart(Callback):
    """A fit that fails before its first optimizer step removes the log folder it created (config.yaml and an empty
    event file), and its parent if left empty, so failed starts leave no `version_N` behind; a run that trained keeps
    its logs."""

    def __init__(self) -> None:
        self._start_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._start_step is not None and trainer.global_step > self._start_step:
            return
        if trainer.is_global_zero and trainer.logger is not None and trainer.logger.log_dir is not None:
            for logger in trainer.loggers:
                logger.finalize("failed")  # close the event file before removing its folder
            folder = Path(trainer.logger.log_dir)
            shutil.rmtree(folder, ignore_errors=True)
            if folder.parent.is_dir() and not any(folder.parent.iterdir()):  # e.g. runs/<name>, made for this run
                folder.parent.rmdir()
