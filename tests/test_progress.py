"""StepProgressBar: the training bar counts optimizer steps of max_steps, also after a resume mid-epoch."""

import lightning.pytorch as L
from lightning.pytorch.callbacks import ModelCheckpoint
from test_lit import built, make_trainer, random_batches

from swaa.progress import StepProgressBar


def test_bar_counts_steps_of_max_steps_across_epochs_and_a_resume(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    make_trainer(tmp_path, 3, callbacks=[checkpoint], enable_checkpointing=True).fit(built(), random_batches())
    bar = StepProgressBar()  # 4 batches per epoch: the resume starts mid-epoch 0
    trainer = L.Trainer(accelerator="cpu", max_steps=6, logger=False, limit_val_batches=0, enable_model_summary=False,
                        callbacks=[bar, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    trainer.fit(built(), random_batches(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert trainer.current_epoch >= 1
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (6, 6)  # Lightning's bar: 2/4
    assert bar.train_progress_bar.desc.startswith(f"Epoch {trainer.current_epoch - 1}, step")  # the epoch just ended
