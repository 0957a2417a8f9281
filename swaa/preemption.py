"""Preemption: on SIGTERM finish the optimizer step, write last.ckpt, exit 143 so the scheduler requeues the job."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from swaa.files import remove_temporaries

SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM  # 143: the shell's status of a process ended by SIGTERM


def worker_ignores_stop_signals(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: SIGTERM (SLURM, `timeout`) and Ctrl-C's SIGINT reach the whole process group; a
    worker they ended made the main process raise (on SIGTERM mid-save), so workers leave both to the main process."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class SaveOnSigterm(Callback):
    """On SIGTERM, at the end of the current optimizer step (or validation), every rank stops at the same step: rank 0
    writes the ModelCheckpoint's last.ckpt (atomically), logs one line and all ranks exit with status 143;
    `--ckpt_path last` resumes with no lost or repeated samples (the sampler position is in the checkpoint).

    The signal only sets a flag; ranks agree on it with one all-reduce per step, so a SIGTERM to rank 0 alone (or to
    every rank) stops all of them. It replaces Lightning's SIGTERM handler, which runs a collective inside the handler.
    Temporary files of checkpoint writes cut short by a SIGKILL are removed when a run starts.
    """

    def __init__(self) -> None:
        self._received = False
        self._steps_seen = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != TrainerFn.FITTING:
            return
        checkpoint = trainer.checkpoint_callback
        if not isinstance(checkpoint, ModelCheckpoint) or not checkpoint.save_last:
            raise ValueError("SaveOnSigterm writes the last.ckpt of a ModelCheckpoint callback: add one with "
                             "save_last: true")
        if checkpoint.save_last == "link":
            raise ValueError("ModelCheckpoint(save_last='link') replaces last.ckpt by removing it and then linking "
                             "it, so a kill in between leaves no last checkpoint; use save_last: true")
        if trainer.is_global_zero and checkpoint.dirpath is not None:
            remove_temporaries(checkpoint.dirpath)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._received = False
        if threading.current_thread() is threading.main_thread():  # Lightning has just installed its handler
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._received = True

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._steps_seen = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step != self._steps_seen:  # an optimizer step ended (not a gradient-accumulation batch)
            self._stop_if_signalled(trainer, "on_train_batch_end", *args)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._stop_if_signalled(trainer, "on_validation_end", pl_module)

    def _stop_if_signalled(self, trainer: L.Trainer, hook: str, *args: Any) -> None:
        """If signalled: first the checkpoint callbacks' `hook` (Lightning runs them after this callback), so a
        checkpoint due at this step (e.g. every_n_train_steps) is written, then last.ckpt; then stop."""
        if not trainer.strategy.reduce_boolean_decision(self._received, all=False):
            return
        for callback in trainer.checkpoint_callbacks:
            getattr(callback, hook)(trainer, *args)
        checkpoint = trainer.checkpoint_callback
        path = checkpoint.last_model_path or checkpoint.format_checkpoint_name({}, checkpoint.CHECKPOINT_NAME_LAST)
        checkpoint.last_model_path = path  # part of the saved state: the resumed run keeps writing this file
        trainer.save_checkpoint(path, weights_only=False)  # rank 0 writes, atomically (AtomicCheckpointIO); full state
        rank_zero_info(f"SIGTERM: saved {Path(path)} at step {trainer.global_step}; exiting with status "
                       f"{SIGTERM_EXIT_STATUS} (resume with --ckpt_path last)")
        raise SIGTERMException(SIGTERM_EXIT_STATUS)
