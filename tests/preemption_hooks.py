"""Test-only callbacks that tests/test_preemption.py gives train.py with `--trainer.callbacks+=`: record the samples of
every optimizer step, and pause at a chosen point of a step until the test has signalled the process."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import lightning.pytorch as L
import torch

POINTS = ("step_start", "before_optimizer_step", "validation", "checkpoint_write")


class RecordSamples(L.Callback):
    """Append `{"step": global step, "rows": [hash of each row's tokens]}` to `<out>/samples-rank<R>.jsonl` after every
    optimizer step (a step redone after a resume appends again: readers keep the last record of each step); with
    `weights`, rank 0 also saves the trainable weights after every step to `<out>/weights-step<N>.pt`."""

    def __init__(self, out: str, weights: bool = False):
        self.out, self.weights = Path(out), weights

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        rows = [hashlib.sha1(ids[mask.bool()].numpy().tobytes()).hexdigest()[:16]
                for ids, mask in zip(batch["input_ids"].cpu(), batch["attention_mask"].cpu())]
        with open(self.out / f"samples-rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "rows": rows}) + "\n")
        if self.weights and trainer.is_global_zero:
            state = {n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
            torch.save(state, self.out / f"weights-step{trainer.global_step}.pt")


class PauseAt(L.Callback):
    """At `point` of optimizer step `step` (1-based), write `<out>/paused-rank<R>` and wait until `<out>/go` exists.

    Points: step_start (before the step's batch, after the previous step's checkpoints), before_optimizer_step (after
    the backward pass), validation (before its first batch), checkpoint_write (inside torch.save of the step's
    `nth_write`-th checkpoint file, on rank 0: its temporary file is open, the final file not yet replaced).
    Every rank writes `<out>/pid-rank<R>` at setup.
    """

    def __init__(self, out: str, point: str, step: int, nth_write: int = 2):
        if point not in POINTS:
            raise ValueError(f"PauseAt.point={point!r}: expected one of {POINTS}")
        self.out, self.point, self.step, self.nth_write = Path(out), point, step, nth_write
        self.writes = 0

    def setup(self, trainer, pl_module, stage):
        (self.out / f"pid-rank{trainer.global_rank}").write_text(str(os.getpid()))

    def pause(self, trainer) -> None:
        (self.out / f"paused-rank{trainer.global_rank}").write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while not (self.out / "go").exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"PauseAt: no {self.out / 'go'} after 120 s")
            time.sleep(0.02)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.point == "step_start" and trainer.global_step + 1 == self.step:
            self.pause(trainer)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.point == "before_optimizer_step" and trainer.global_step + 1 == self.step:
            self.pause(trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.point == "validation" and trainer.global_step == self.step and batch_idx == 0:
            self.pause(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self.point == "checkpoint_write" and trainer.global_step == self.step:
            self.writes += 1
            if self.writes == self.nth_write and trainer.is_global_zero:
                checkpoint["zz_pause"] = _PauseWhenPickled(self, trainer)  # pickled last, inside the write


class _PauseWhenPickled:
    def __init__(self, hook: PauseAt, trainer):
        self.hook, self.trainer = hook, trainer

    def __reduce__(self):
        self.hook.pause(self.trainer)
        return (str, ("resumed",))


def read_samples(out: Path) -> dict[int, list[str]]:
    """Rows trained at each step (all ranks, rank order), keeping the last record of a step that was redone."""
    steps: dict[int, dict[int, list[str]]] = {}
    for path in sorted(out.glob("samples-rank*.jsonl")):
        rank = int(path.stem.removeprefix("samples-rank"))
        for line in path.read_text().splitlines():
            record = json.loads(line)
            steps.setdefault(record["step"], {})[rank] = record["rows"]
    return {step: sum((rows[r] for r in sorted(rows)), []) for step, rows in sorted(steps.items())}


def recorded_steps(out: Path, rank: int = 0) -> list[int]:
    """The steps rank `rank` recorded, in order, repeats included (a redone step appears twice)."""
    lines = (out / f"samples-rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def trainable_state(path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint["global_step"], checkpoint["state_dict"]
