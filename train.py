"""SWAA fine-tuning: a LightningCLI over swaa.lit.SWAAFineTuner and the DataModules of swaa.data.

    python train.py fit --config configs/smoke.yaml                      # tiny random Llama, a few CPU steps
    python train.py fit --config configs/smoke.yaml --ckpt_path last     # resume from runs/smoke/checkpoints/last.ckpt
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import swaa.data  # noqa: F401  (registers SyntheticDataModule and SFTDataModule for `--data NAME`)
from swaa.checkpoints import AtomicCheckpointIO, UnreadableCheckpoint, load_file
from swaa.data.sft import ChatDataModule
from swaa.lit import SWAAFineTuner
from swaa.models import load_config
from swaa.preemption import SaveOnSigterm
from swaa.progress import StepProgressBar
from swaa.runs import DropFailedStart, last_checkpoints


TRAINER_DEFAULTS = {
    "default_root_dir": "runs",  # the logger's save_dir follows it (a link), and so do checkpoints without a dirpath
    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger"},
    "use_distributed_sampler": False,  # the swaa.data loaders split batches over ranks themselves
}
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc")  # --ckpt_path values Lightning resolves itself, as does registry[:X]
MODEL_FLAG = "--model.model"  # the model path, named so in its errors; the data module's tokenizer is linked to it


def ckpt_path_error(path: str | None) -> str | None:
    """Why a `--ckpt_path` file cannot be resumed from (missing, or not readable by torch.load), or None; only the
    pickle and zip index are read (mmap). Names Lightning resolves itself and folders (sharded FSDP) are its own."""
    if path is None or str(path) in LIGHTNING_CKPT_NAMES or str(path).lower().partition(":")[0] == "registry" \
            or Path(path).is_dir():
        return None
    try:
        load_file(path, mmap=True)
    except FileNotFoundError:
        return "no such file"
    except UnreadableCheckpoint as e:
        return e.reason
    return None


def check_model_and_data(datamodule: LightningDataModule, model: str | None) -> None:
    """The model (its config alone) and a ChatDataModule's tokenizer (loaded here), errors naming MODEL_FLAG; the data
    fields that bound a sample's length (ChatDataModule.length_fields) must not exceed the model's context
    (max_position_embeddings): transformers would only warn."""
    context = getattr(load_config(model, MODEL_FLAG), "max_position_embeddings", None)
    if not isinstance(datamodule, ChatDataModule):
        return
    for field, value in datamodule.length_fields().items():
        longest = max(value) if isinstance(value, list) else value
        if context is not None and longest > context:
            raise ValueError(f"data.init_args.{field}={value}: {longest} tokens is longer than the context of model "
                             f"{model or 'SmolLM2 (default)'}; expected values <= {context} (its "
                             f"max_position_embeddings)")
    datamodule.load_tokenizer(MODEL_FLAG)


class SWAACLI(LightningCLI):
    """The model path is given once (`--model.model`); the data module's tokenizer follows it (tiny specs: SmolLM2's).
    Every trainer writes checkpoints atomically, saves last.ckpt and exits 143 on SIGTERM, counts steps in its progress
    bar and leaves no log folder when it fails before its first step; `fit` refuses to start over an existing run."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model", "data.init_args.tokenizer")
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """A `--ckpt_path` file that is missing or unreadable is one error line (exit 2, as for other bad arguments)
        before Lightning reads it (a torch.load traceback) or anything is built; `last` and the like pass."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        reason = ckpt_path_error(path)
        if reason is not None:
            parser.exit(2, f"train.py: error: --ckpt_path {path}: not a readable checkpoint: {reason}\n")

    def before_instantiate_classes(self) -> None:
        """A ModelCheckpoint without `dirpath` writes to <default_root_dir>/<logger name>/checkpoints, one folder for
        every logger version, so that `--ckpt_path last` finds the last checkpoint of an earlier command."""
        trainer = self._get(self.config, "trainer")
        name = (trainer.logger.init_args.name or "") if isinstance(trainer.logger, Namespace) else ""
        for callback in trainer.callbacks or []:
            if callback.class_path.endswith(".ModelCheckpoint") and callback.init_args.dirpath is None:
                callback.init_args.dirpath = os.path.join(trainer.default_root_dir, name, "checkpoints")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer")
        plugins, callbacks = (config[key] or [] for key in ("plugins", "callbacks"))
        plugins, callbacks = (x if isinstance(x, list) else [x] for x in (plugins, callbacks))
        callbacks = [*callbacks, SaveOnSigterm(), DropFailedStart()]
        if config["enable_progress_bar"] is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(StepProgressBar())
        return super().instantiate_trainer(plugins=[*plugins, AtomicCheckpointIO()], callbacks=callbacks, **kwargs)

    def before_fit(self) -> None:
        """A fit without `--ckpt_path` beside an existing run's last.ckpt would write last-v1.ckpt next to it: refuse;
        a bad model or tokenizer and sample lengths beyond the model's context are errors, before any data is made."""
        found = last_checkpoints(self.trainer)
        if self._get(self.config, "ckpt_path") is None and found:
            raise SystemExit(f"train.py: a run already exists at {found[0].parent} ({found[0].name}): resume it with "
                             f"--ckpt_path last, or move that folder away to start fresh")
        self.before_validate()

    def before_validate(self) -> None:
        """validate, test and predict check the model, tokenizer and sample lengths as fit does; every subcommand notes
        the log folder's files first, so that a failed start removes only what it added (DropFailedStart)."""
        for callback in self.trainer.callbacks:
            if isinstance(callback, DropFailedStart):
                callback.note_existing_logs(self.trainer)
        check_model_and_data(self.datamodule, self.model.hparams.model)

    before_test = before_predict = before_validate


def cli_main(args: list[str] | None = None, run: bool = True) -> SWAACLI:
    return SWAACLI(SWAAFineTuner, LightningDataModule, subclass_mode_data=True, args=args, run=run,
                   trainer_defaults=TRAINER_DEFAULTS, save_config_kwargs={"overwrite": True},
                   auto_configure_optimizers=False)


def _interrupted_trainer(interrupt: BaseException) -> Trainer | None:
    """The Trainer in the call stack that `interrupt` unwound (a local of Lightning's frames), if training had begun."""
    return next((value for frame, _ in traceback.walk_tb(interrupt.__traceback__)
                 for value in frame.f_locals.values() if isinstance(value, Trainer)), None)


def _saved_message(trainer: Trainer | None) -> str:
    """One line: the step a Ctrl-C'ed run reached, its last checkpoint and how to resume from it."""
    if trainer is None:
        return "train.py: interrupted before training started; nothing was saved"
    checkpoints = [(c.last_model_path, "last") for c in trainer.checkpoint_callbacks if c.last_model_path]
    checkpoints += [(c.best_model_path, c.best_model_path) for c in trainer.checkpoint_callbacks if c.best_model_path]
    if not checkpoints:
        return f"train.py: interrupted at step {trainer.global_step}, before the first checkpoint; nothing was saved"
    path, resume = checkpoints[0]
    return (f"train.py: interrupted at step {trainer.global_step}; last checkpoint {path}; to resume, run the same "
            f"command with --ckpt_path {resume}")


def main(args: list[str] | None = None) -> None:
    """train.py's command line: bad values, data and paths end in one `train.py: error:` line (exit 1; bad arguments
    and an unreadable --ckpt_path: exit 2), Ctrl-C in one line saying what was saved and how to resume (exit 130); bugs
    keep their traceback."""
    def ctrl_c(signum, frame):  # not KeyboardInterrupt, on which Lightning prints its own notice and exits 1
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut Lightning's cleanup short
        raise SystemExit(130)

    previous = signal.signal(signal.SIGINT, ctrl_c)
    try:
        cli_main(args)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"train.py: error: {e}")
    except SystemExit as e:
        if e.code != 130:
            raise
        trainer = _interrupted_trainer(e)
        if trainer is None or trainer.is_global_zero:  # other ranks of a multi-process run stay quiet
            print(_saved_message(trainer), file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    main()
