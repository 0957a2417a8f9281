"""DDP on CPU (gloo, 2 spawned processes): same losses and weights as one process on the doubled batch; only rank 0
writes checkpoints and logs."""

import csv
from functools import partial

import lightning.pytorch as L
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from test_lit import TINY, random_batches

from swaa.checkpoints import AtomicCheckpointIO
from swaa.data.sampler import LengthGroupedBatchSampler, ResumableDataLoader
from swaa.lit import SWAAFineTuner
from swaa.lora import LoRASettings
from swaa.optim import AdamW, WarmupDecay

STEPS = 3


class RecordingCheckpointIO(AtomicCheckpointIO):
    """Appends the writing rank and path to `<root>/writes-rank<R>.txt` for every checkpoint saved."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        rank = dist.get_rank() if dist.is_initialized() else 0
        with open(self.root / f"writes-rank{rank}.txt", "a") as f:
            f.write(f"{path}\n")
        super().save_checkpoint(checkpoint, path, storage_options)


class RankSplitData(L.LightningDataModule):
    """random_batches rows in order, split over ranks like swaa.data: rank r takes the r-th slice of every step."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size

    def train_dataloader(self) -> ResumableDataLoader:
        rows = list(random_batches(n=4 * STEPS, batch_size=1).dataset)
        sampler = LengthGroupedBatchSampler([len(r["input_ids"]) for r in rows], self.batch_size, shuffle=False,
                                            num_replicas=self.trainer.world_size, rank=self.trainer.global_rank)
        return ResumableDataLoader(rows, batch_sampler=sampler)


def fit(root, devices: int, batch_size: int, accelerator: str = "cpu", strategy: str | None = None,
        max_steps: int = STEPS, ckpt_path=None, version: int = 0,
        init_weights: str | None = None) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Train up to `max_steps` of a STEPS-step schedule (resuming from `ckpt_path`); return the train/loss logged per
    step in this run and the trainable weights of last.ckpt."""
    L.seed_everything(0)
    module = SWAAFineTuner(model=TINY, swaa={"window": 8, "sink": 2, "fa_decode": True}, lora=LoRASettings(rank=4),
                           optimizer=partial(AdamW, lr=1e-2), lr_scheduler=partial(WarmupDecay, max_steps=STEPS),
                           init_weights=init_weights)
    strategy = strategy or ("ddp_spawn" if devices > 1 else "auto")
    trainer = L.Trainer(accelerator=accelerator, devices=devices, strategy=strategy,
                        max_steps=max_steps, default_root_dir=root,
                        logger=CSVLogger(root, name="logs", version=version),
                        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_train_steps=1,
                                                   save_top_k=-1)],
                        plugins=[RecordingCheckpointIO(root)], log_every_n_steps=1, limit_val_batches=0,
                        use_distributed_sampler=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=RankSplitData(batch_size), ckpt_path=ckpt_path)
    with open(root / "logs" / f"version_{version}" / "metrics.csv") as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row["train/loss"]]
    return losses, torch.load(root / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]


def test_ddp_matches_single_process_on_the_doubled_batch(tmp_path):
    single_losses, single_weights = fit(tmp_path / "single", devices=1, batch_size=4)
    ddp_losses, ddp_weights = fit(tmp_path / "ddp", devices=2, batch_size=2)
    assert len(single_losses) == STEPS and len(set(single_losses)) == STEPS
    assert ddp_losses == pytest.approx(single_losses, rel=1e-5)
    assert ddp_weights.keys() == single_weights.keys()
    for name in single_weights:
        torch.testing.assert_close(ddp_weights[name], single_weights[name], rtol=1e-4, atol=1e-6, msg=name)
    root = tmp_path / "ddp"
    assert [p.name for p in root.glob("writes-rank*.txt")] == ["writes-rank0.txt"]
    assert sorted(p.name for p in (root / "ckpt").iterdir()) == sorted(
        [f"epoch=0-step={s}.ckpt" for s in range(1, STEPS + 1)] + ["last.ckpt"])
    assert [p.name for p in (root / "logs").iterdir()] == ["version_0"]
