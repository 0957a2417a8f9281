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
    """A fit that fails before its first optimizer step removes what it added to the log folder: the folder itself
    (config.yaml and an empty event file) and its parent if left empty, so failed starts leave no `version_N` behind;
    in a folder that existed before (a fixed logger version, e.g. a resumed run's) only its new files. A run that
    trained keeps its logs. `note_existing_logs` must run before the trainer starts (train.py calls it)."""

    def __init__(self) -> None:
        self._start_step: int | None = None
        self._existing: set[Path] | None = None  # the log folder's paths before this run (empty: no folder); None:
        # not noted, so nothing is removed

    def note_existing_logs(self, trainer: L.Trainer) -> None:
        """Remember the log folder's contents before the trainer creates (or writes into) it."""
        folder = self._log_dir(trainer)
        self._existing = set(folder.rglob("*")) | {folder} if folder is not None and folder.exists() else set()

    @staticmethod
    def _log_dir(trainer: L.Trainer) -> Path | None:
        """The first logger's folder, if it has one."""
        return Path(trainer.logger.log_dir) if trainer.logger is not None and trainer.logger.log_dir else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._start_step is not None and trainer.global_step > self._start_step:
            return
        folder = self._log_dir(trainer)
        if not trainer.is_global_zero or folder is None or self._existing is None:
            return
        for logger in trainer.loggers:
            logger.finalize("failed")  # close the event file before removing it
        if folder in self._existing:  # an earlier run's folder: remove only this run's files, deepest first
            for path in sorted(set(folder.rglob("*")) - self._existing, reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
            return
        shutil.rmtree(folder, ignore_errors=True)
        if folder.parent.is_dir() and not any(folder.parent.iterdir()):  # e.g. runs/<name>, made for this run
            folder.parent.rmdir()
