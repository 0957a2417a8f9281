"""StepProgressBar: the training bar counts optimizer steps of max_steps, also after a resume mid-epoch."""

import lightning.pytorch as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from test_lit import built, make_trainer, random_batches

from swaa.progress import StepProgressBar


@pytest.mark.parametrize(("max_steps", "last_epoch"), [(6, 1), (4, 0)])  # epoch 0 is the one the resume starts in
def test_bar_counts_steps_of_max_steps_across_epochs_and_a_resume(tmp_path, max_steps, last_epoch):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    make_trainer(tmp_path, 3, callbacks=[checkpoint], enable_checkpointing=True).fit(built(), random_batches())
    bar = StepProgressBar()  # 4 batches per epoch: the resume starts mid-epoch 0
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, limit_val_batches=0,
                        enable_model_summary=False,
                        callbacks=[bar, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    trainer.fit(built(), random_batches(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (max_steps, max_steps)  # Lightning's: 2/4
    assert bar.train_progress_bar.desc.startswith(f"Epoch {last_epoch}, step")
