"""Validation by generation: greedy answers to the datamodule's validation samples, scored, logged as val/acc."""

from __future__ import annotations

import contextlib
import logging

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch.distributed.fsdp import FullyShardedDataParallel
from torchmetrics import MeanMetric

from swaa.generation import DECODE_MODES, generate_answers
from swaa.tasks.generators import Sample
from swaa.tasks.scorers import score

log = logging.getLogger(__name__)


class GenerationValidation(Callback):
    """After every `every_n_val`-th validation, generate answers to up to `max_samples` of the datamodule's
    `val_samples()` (or `val_prompts()`) with `pl_module.model` as configured (SWAA prefill + FA decode per its SWAA
    config) and log `val/acc/<task>` and `val/acc`. Samples are split over ranks; the metrics are synced across them.
    """

    def __init__(self, every_n_val: int = 1, max_samples: int = 32, max_new_tokens: int = 32, batch_size: int = 8,
                 decode: str = "generate"):
        """`decode`: "generate" (transformers) or "static" (StaticDecoder steps, CUDA graphs on GPU)."""
        for name, value in (("every_n_val", every_n_val), ("max_samples", max_samples),
                            ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GenerationValidation.{name}={value!r}: expected an int >= 1")
        if decode not in DECODE_MODES:
            raise ValueError(f"GenerationValidation.decode={decode!r}: expected one of {DECODE_MODES}")
        self.decode = decode
        self.every_n_val = every_n_val
        self.max_samples = max_samples
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.validations = 0

    def _samples(self, trainer: L.Trainer) -> list[Sample]:
        """The datamodule's val_samples(), or its val_prompts() dicts {prompt, answers, scorer[, task]}."""
        datamodule = trainer.datamodule
        if hasattr(datamodule, "val_samples"):
            return _spread(list(datamodule.val_samples()), self.max_samples)
        if hasattr(datamodule, "val_prompts"):
            prompts = _spread(datamodule.val_prompts(), self.max_samples)
            return [Sample(id=f"val-{i}", task=p.get("task", "val"), prompt=p["prompt"], answers=list(p["answers"]),
                           scorer=p["scorer"]) for i, p in enumerate(prompts)]
        raise ValueError(f"GenerationValidation needs a datamodule with val_samples() or val_prompts(); "
                         f"{type(datamodule).__name__} has neither")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        if (self.validations - 1) % self.every_n_val:
            return
        samples = self._samples(trainer)
        if not samples:
            log.warning("GenerationValidation: the datamodule has no validation samples; nothing logged")
            return
        shard = samples[trainer.global_rank::trainer.world_size]
        model, tokenizer = pl_module.model, trainer.datamodule.tokenizer
        was_training = model.training
        model.eval()
        try:
            with _whole_weights(trainer):
                predictions = generate_answers(model, tokenizer, [s.prompt for s in shard], self.max_new_tokens,
                                               self.batch_size, decode=self.decode)
        finally:
            model.train(was_training)
        per_task = {task: MeanMetric().to(pl_module.device) for task in dict.fromkeys(s.task for s in samples)}
        overall = MeanMetric().to(pl_module.device)
        for sample, prediction in zip(shard, predictions):
            value = score(sample.scorer, prediction, sample.answers, sample.choices)
            per_task[sample.task].update(value)
            overall.update(value)
        # compute() syncs over ranks, so every rank logs the same values; sync_dist only tells Lightning so
        for task, metric in per_task.items():
            pl_module.log(f"val/acc/{task}", metric.compute(), sync_dist=True)
        pl_module.log("val/acc", overall.compute(), prog_bar=True, sync_dist=True)


def _whole_weights(trainer: L.Trainer):
    """Context in which every rank holds whole weights: FSDP gathers its shards (generation runs outside its forward
    hooks); other strategies need nothing."""
    wrapped = trainer.strategy.model
    if wrapped is not None and any(isinstance(m, FullyShardedDataParallel) for m in wrapped.modules()):
        return FullyShardedDataParallel.summon_full_params(wrapped, writeback=False)
    return contextlib.nullcontext()


def _spread(items: list, k: int) -> list:
    """Up to k items evenly spaced over the list, so that every task and length of an ordered set is represented."""
    if len(items) <= k:
        return items
    return [items[i * len(items) // k] for i in range(k)]
