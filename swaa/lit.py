"""SWAAFineTuner: the LightningModule for SWAA fine-tuning (LoRA or full), CE loss plus optional KL to the FA teacher.

The model is built in `configure_model` on the trainer's device, in the dtype of the trainer's precision
("bf16-true" -> bfloat16); checkpoints hold only the trainable weights and a fingerprint (swaa/checkpoints.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as L
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from peft import PeftModel
from transformers import PreTrainedModel

from swaa.checkpoints import (FINGERPRINT_KEY, CheckpointError, check_fingerprint, check_keys, load_trained_weights,
                              make_fingerprint, read_checkpoint, trainable_names)
from swaa.config import SWAAConfig, resolve_swaa
from swaa.data.chat import IGNORE_INDEX
from swaa.integration import apply_swaa, swaa_disabled
from swaa.lora import LoRASettings, add_lora, swapped_weights
from swaa.loss import answer_logits, answer_loss, supervised_columns
from swaa.models import base_model, load_model
from swaa.optim import AdamW, WarmupDecay

log = logging.getLogger(__name__)
RNG_KEY = "rng_states"
"""Checkpoint entry: every rank's random generator states (rng_states()), in rank order."""


def rng_states() -> dict[str, Any]:
    """This process's torch (CPU, CUDA), numpy and Python generator states, numpy's key as a tensor so that the
    checkpoint loads with weights_only=True."""
    states = _collect_rng_states(include_cuda=torch.cuda.is_available())
    kind, key, *rest = states["numpy"]
    states["numpy"] = (kind, torch.from_numpy(key.astype(np.int64)), *rest)
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore the generator states rng_states() returned."""
    kind, key, *rest = states["numpy"]
    _set_rng_states({**states, "numpy": (kind, key.numpy().astype(np.uint32), *rest)})


def build_model(spec: str | None, swaa: SWAAConfig, backend: str, lora: LoRASettings, device: torch.device | str,
                dtype: torch.dtype, gradient_checkpointing: bool = False) -> PreTrainedModel:
    """Load (or build a tiny) model on `device`, switch it to SWAA, then add LoRA adapters."""
    base = load_model(spec, dtype=dtype, device=device)
    if gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    apply_swaa(base, swaa, backend)
    return add_lora(base, lora)


class SWAAFineTuner(L.LightningModule):
    """Fine-tune a causal LM under a SWAA configuration: prompt rows under SWA, answer rows under full attention."""

    def __init__(
        self,
        model: str | None = None,
        swaa: dict | str | None = None,
        backend: str = "auto",
        lora: LoRASettings = LoRASettings(),
        optimizer: OptimizerCallable = AdamW,
        lr_scheduler: LRSchedulerCallable = WarmupDecay,
        gradient_checkpointing: bool = False,
        distill_weight: float = 0.0,
        distill_temperature: float = 1.0,
        init_weights: str | None = None,
    ):
        """
        Args:
            model: Hugging Face folder, .gguf file, None for the embedded SmolLM2-135M-Instruct, or
                'tiny:<family>:<layers>:<vocab>' for a tiny random Llama/Qwen3.
            swaa: SWAA config fields (window, sink, fa_decode, full_layers) or a preset name from
                swaa/presets.yaml (bundled); None trains with full attention.
            backend: SWAA attention backend (swaa.attention.BACKENDS): auto, reference, chunked, flex, fa4, flash or
                cudnn.
            lora: LoRA adapters, or full_finetune.
            optimizer: the optimizer of the trainable weights (YAML: class_path and init_args, e.g. lr).
            lr_scheduler: the learning-rate schedule, stepped after every optimizer step (default: linear warmup,
                then cosine decay to 0 at the trainer's max_steps; swaa/optim.py).
            gradient_checkpointing: recompute activations in the backward pass (less memory).
            distill_weight: weight of KL(FA teacher || student) on answer tokens added to the CE loss; the teacher is
                the weights this run started from (the base model, or it with the adapters of `init_weights`) under
                full attention.
            distill_temperature: softmax temperature of the distillation term.
            init_weights: a train.py checkpoint or a peft adapter folder (same model and LoRA settings) whose trained
                weights start this run (e.g. the FA teacher's adapters, to SWAA-fine-tune it); `--ckpt_path` resumes
                instead.
        """
        super().__init__()
        self.swaa_config = resolve_swaa(swaa)
        if distill_weight < 0 or distill_temperature <= 0:
            raise ValueError(f"distill_weight={distill_weight} must be >= 0 and distill_temperature="
                             f"{distill_temperature} > 0")
        if distill_weight > 0 and lora.full_finetune:
            raise ValueError("distill_weight > 0 needs LoRA: the FA teacher is the starting weights, which "
                             "full_finetune does not keep beside the trained ones")
        self.lora_settings = lora
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.save_hyperparameters(ignore=["lora", "optimizer", "lr_scheduler"])  # the CLI's config.yaml has them
        self.hparams["lora"] = lora.to_dict()  # plain data, so checkpoints load with weights_only=True
        self.model: PreTrainedModel | PeftModel | None = None
        self.fingerprint: dict | None = None
        self.strict_loading = False  # checkpoints hold only trainable weights; on_load_checkpoint checks the key set
        self._batch_start: float | None = None
        self._start_adapters: dict[str, torch.Tensor] | None = None  # the distillation teacher's adapter weights
        self._resumed_rng: dict[str, Any] | None = None  # set before the first step of a resumed fit

    # -- model --------------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        device = self._trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        self.model = build_model(self.hparams.model, self.swaa_config, self.hparams.backend, self.lora_settings,
                                 device, torch.get_default_dtype(), self.hparams.gradient_checkpointing).train()
        if self.hparams.init_weights is not None:
            load_trained_weights(self.model, self.hparams.init_weights, self.lora_settings)
        if self.hparams.distill_weight > 0:  # the teacher: these starting adapters (fresh LoRA: the base model)
            self._start_adapters = {name: p.detach().clone() for name, p in self.model.named_parameters()
                                    if p.requires_grad}
        self.fingerprint = make_fingerprint(self.hparams.model, self.base_model.config, self.swaa_config,
                                            self.lora_settings)

    @property
    def base_model(self) -> PreTrainedModel:
        """The Hugging Face model under the peft wrapper (where SWAA is applied)."""
        return base_model(self.model)

    def _answer_loss(self, batch: dict[str, torch.Tensor], columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CE loss, logits at the supervised `columns`): no logits for prompt-only columns."""
        logits = answer_logits(self.model, batch, columns)
        return answer_loss(logits, batch["labels"], columns), logits

    # -- steps --------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        columns = supervised_columns(batch["labels"])  # once per step: finding them syncs with the GPU
        teacher = self._teacher_logits(batch, columns) if self.hparams.distill_weight > 0 else None
        ce, logits = self._answer_loss(batch, columns)
        loss = ce
        n = batch["input_ids"].shape[0]
        self.log("train/ce", ce, batch_size=n, sync_dist=True)
        if teacher is not None:
            kl = self._distill_kl(batch, logits, teacher, columns)
            self.log("train/kl", kl, batch_size=n, sync_dist=True)
            loss = ce + self.hparams.distill_weight * kl
        self.log("train/loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        return loss

    def _teacher_logits(self, batch: dict[str, torch.Tensor], columns: torch.Tensor) -> torch.Tensor:
        """The FA teacher's logits at `columns`: the adapters this run started from, full attention, eval mode.
        Computed before the student's forward pass, so that no weight the student's graph saved changes under it."""
        training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), swapped_weights(self.model, self._start_adapters), swaa_disabled(self.base_model):
                return answer_logits(self.model, batch, columns)
        finally:
            self.model.train(training)

    def _distill_kl(self, batch: dict[str, torch.Tensor], logits: torch.Tensor, teacher: torch.Tensor,
                    columns: torch.Tensor) -> torch.Tensor:
        """KL(teacher || student) per answer token at temperature T, from both models' logits at `columns`."""
        answer = batch["labels"][:, 1:][:, columns] != IGNORE_INDEX  # logits at column i predict the token at i + 1
        t = self.hparams.distill_temperature
        student_logp = F.log_softmax(logits[answer].float() / t, dim=-1)  # (N answer tokens, V)
        teacher_logp = F.log_softmax(teacher[answer].float() / t, dim=-1)
        return F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean") * t * t

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path is not None:
            rank_zero_info(f"resumed from {self.trainer.ckpt_path} at step {self.trainer.global_step} "
                           f"(epoch {self.trainer.current_epoch})")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._resumed_rng is not None:  # here, after the data loaders' iterators are made (they draw a seed)
            set_rng_states(self._resumed_rng)
            self._resumed_rng = None
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        n = batch["input_ids"].shape[0]
        tokens = batch["attention_mask"].sum().item()
        self.log("train/tokens_per_s", tokens / (time.perf_counter() - self._batch_start), batch_size=n)
        if self.device.type == "cuda":
            self.log("train/gpu_mem_gib", torch.cuda.max_memory_allocated(self.device) / 2**30, batch_size=n)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        n = batch["input_ids"].shape[0]
        columns = supervised_columns(batch["labels"])
        loss = self._answer_loss(batch, columns)[0]
        if self.swaa_config.enabled:
            with swaa_disabled(self.base_model):
                loss_fa = self._answer_loss(batch, columns)[0]
        else:
            loss_fa = loss
        self.log("val/loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("val/loss_fa", loss_fa, batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> dict:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer(params)
        scheduler = self.lr_scheduler(optimizer)
        if isinstance(scheduler, WarmupDecay) and scheduler.max_steps is None:
            scheduler.max_steps = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints --------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keys = trainable_names(self)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        if self.trainer.is_global_zero or checkpoint["state_dict"]:  # FSDP gathers the weights on rank 0 only
            check_keys(set(checkpoint["state_dict"]), keys, "being saved")
        checkpoint[FINGERPRINT_KEY] = self.fingerprint
        states = rng_states()  # every rank calls this hook: collect each rank's generators (dropout) for rank 0 to save
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)
            checkpoint[RNG_KEY] = gathered
        else:
            checkpoint[RNG_KEY] = [states]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        path = self._trainer.ckpt_path if self._trainer is not None else None
        if FINGERPRINT_KEY not in checkpoint:
            raise CheckpointError(f"{path} is not a train.py checkpoint (no {FINGERPRINT_KEY!r} entry)")
        check_fingerprint(checkpoint[FINGERPRINT_KEY], self.fingerprint, path)
        # FSDP loads the weights itself and passes the rest: read the (small, trainable-only) weights' names again
        state = checkpoint["state_dict"] if "state_dict" in checkpoint else read_checkpoint(path)["state_dict"]
        check_keys(set(state), trainable_names(self), path)
        if self._trainer is None or self._trainer.state.fn != TrainerFn.FITTING:
            return
        saved = checkpoint.get(RNG_KEY, [])
        if len(saved) == self._trainer.world_size:
            self._resumed_rng = saved[self._trainer.global_rank]
        elif self._trainer.is_global_zero:
            log.warning("%s holds the random generator states of %d rank(s), this run has %d: dropout after the "
                        "resume differs from an uninterrupted run's", path, len(saved), self._trainer.world_size)
