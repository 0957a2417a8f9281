"""SWAA fine-tuning: a LightningCLI over swaa.lit.SWAAFineTuner and the DataModules of swaa.data.

    python train.py fit --config configs/smoke.yaml                      # tiny random Llama, a few CPU steps
    python train.py fit --config configs/smoke.yaml --ckpt_path last     # resume from runs/smoke/checkpoints/last.ckpt
"""

from __future__ import annotations

import os
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import swaa.data  # noqa: F401  (registers SyntheticDataModule and SFTDataModule for `--data NAME`)
from swaa.checkpoints import AtomicCheckpointIO
from swaa.lit import SWAAFineTuner


TRAINER_DEFAULTS = {
    "default_root_dir": "runs",  # the logger's save_dir follows it (a link), and so do checkpoints without a dirpath
    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger"},
    "use_distributed_sampler": False,  # the swaa.data loaders split batches over ranks themselves
}


class SWAACLI(LightningCLI):
    """The model path is given once (`--model.model`); the data module's tokenizer follows it (tiny specs: SmolLM2's)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model", "data.init_args.tokenizer")
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")

    def before_instantiate_classes(self) -> None:
        """A ModelCheckpoint without `dirpath` writes to <default_root_dir>/<logger name>/checkpoints, one folder for
        every logger version, so that `--ckpt_path last` finds the last checkpoint of an earlier command."""
        trainer = self._get(self.config, "trainer")
        name = (trainer.logger.init_args.name or "") if isinstance(trainer.logger, Namespace) else ""
        for callback in trainer.callbacks or []:
            if callback.class_path.endswith(".ModelCheckpoint") and callback.init_args.dirpath is None:
                callback.init_args.dirpath = os.path.join(trainer.default_root_dir, name, "checkpoints")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        plugins = self._get(self.config_init, "trainer")["plugins"] or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        return super().instantiate_trainer(plugins=[*plugins, AtomicCheckpointIO()], **kwargs)


def cli_main(args: list[str] | None = None, run: bool = True) -> SWAACLI:
    return SWAACLI(SWAAFineTuner, LightningDataModule, subclass_mode_data=True, args=args, run=run,
                   trainer_defaults=TRAINER_DEFAULTS, save_config_kwargs={"overwrite": True},
                   auto_configure_optimizers=False)


if __name__ == "__main__":
    cli_main()
