"""SWAA fine-tuning: a LightningCLI over swaa.lit.SWAAFineTuner and the DataModules of swaa.data.

    python train.py fit --config configs/smoke.yaml                      # tiny random Llama, a few CPU steps
    python train.py fit --config configs/smoke.yaml --ckpt_path last     # resume from runs/smoke/checkpoints/last.ckpt
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import swaa.data  # noqa: F401  (registers SyntheticDataModule and SFTDataModule for `--data NAME`)
from swaa.checkpoints import AtomicCheckpointIO
from swaa.lit import SWAAFineTuner
from swaa.preemption import SaveOnSigterm
from swaa.progress import StepProgressBar
from swaa.runs import DropFailedStart, last_checkpoints


TRAINER_DEFAULTS = {
    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}},
    "use_distributed_sampler": False,  # the swaa.data loaders split batches over ranks themselves
}


class SWAACLI(LightningCLI):
    """The model path is given once (`--model.model`); the data module's tokenizer follows it (tiny specs: SmolLM2's).
    Every trainer writes checkpoints atomically, saves last.ckpt and exits 143 on SIGTERM, counts steps in its progress
    bar and leaves no log folder when it fails before its first step; `fit` refuses to start over an existing run."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model", "data.init_args.tokenizer")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer")
        plugins, callbacks = (config[key] or [] for key in ("plugins", "callbacks"))
        plugins, callbacks = (x if isinstance(x, list) else [x] for x in (plugins, callbacks))
        callbacks = [*callbacks, SaveOnSigterm(), DropFailedStart()]
        if config["enable_progress_bar"] is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            callbacks.append(StepProgressBar())
        return super().instantiate_trainer(plugins=[*plugins, AtomicCheckpointIO()], callbacks=callbacks, **kwargs)

    def before_fit(self) -> None:
        """A fit without `--ckpt_path` beside an existing run's last.ckpt would write last-v1.ckpt next to it: refuse."""
        found = last_checkpoints(self.trainer)
        if self._get(self.config, "ckpt_path") is None and found:
            raise SystemExit(f"train.py: a run already exists at {found[0].parent} ({found[0].name}): resume it with "
                             f"--ckpt_path last, or move that folder away to start fresh")


def cli_main(args: list[str] | None = None, run: bool = True) -> SWAACLI:
    return SWAACLI(SWAAFineTuner, LightningDataModule, subclass_mode_data=True, args=args, run=run,
                   trainer_defaults=TRAINER_DEFAULTS, save_config_kwargs={"overwrite": True},
                   auto_configure_optimizers=False)


if __name__ == "__main__":
    cli_main()
