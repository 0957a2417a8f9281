"""SWAAFineTuner: LoRA invariants, losses (CE, KL to the FA teacher, SWAA vs FA validation), schedule, exact resume."""

import math
from functools import partial

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader

from swaa.checkpoints import AtomicCheckpointIO
from swaa.data import SyntheticDataModule
from swaa.lit import SWAAFineTuner
from swaa.lora import LoRASettings, swapped_weights
from swaa.loss import supervised_columns
from swaa.optim import AdamW, WarmupDecay, lr_factor
from swaa.tiny import build_tiny_model

TINY = "tiny:llama:2:128"


def random_batches(n: int = 8, length: int = 32, prompt: int = 20, vocab: int = 128, batch_size: int = 2,
                   seed: int = 0) -> DataLoader:
    """Fixed random token sequences, every row with the same prompt length and number of supervised tokens."""
    ids = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))
    labels = ids.clone()
    labels[:, :prompt] = -100
    rows = [{"input_ids": ids[i], "attention_mask": torch.ones(length, dtype=torch.long), "labels": labels[i]}
            for i in range(n)]
    return DataLoader(rows, batch_size=batch_size)


def make_trainer(root, max_steps: int, **kwargs) -> L.Trainer:
    kwargs = {"logger": False, "enable_checkpointing": False, "limit_val_batches": 0, **kwargs}
    return L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, default_root_dir=root,
                     enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()], **kwargs)


def built(**kwargs) -> SWAAFineTuner:
    module = SWAAFineTuner(**{"model": TINY, "swaa": {"window": 8}, "lora": LoRASettings(rank=4), **kwargs})
    module.configure_model()
    return module


def test_lr_schedule():
    assert [lr_factor(s, 2, 10, "cosine") for s in (0, 1)] == pytest.approx([1 / 3, 2 / 3])
    assert lr_factor(2, 2, 10, "cosine") == 1.0 and lr_factor(10, 2, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(6, 2, 10, "cosine") == pytest.approx(0.5) == lr_factor(6, 2, 10, "linear")
    assert lr_factor(9, 2, 10, "constant") == 1.0
    with pytest.raises(ValueError, match="WarmupDecay.decay='cosin'"):
        WarmupDecay(AdamW([torch.nn.Parameter(torch.zeros(1))]), decay="cosin")


class LRRecorder(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, *_):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_default_optimizer_and_schedule_warm_up_then_decay_to_zero_at_the_trainers_max_steps(tmp_path):
    module, recorder = SWAAFineTuner(model=TINY, swaa={"window": 8}, lora=LoRASettings(rank=4),
                                     lr_scheduler=partial(WarmupDecay, warmup_steps=1)), LRRecorder()
    make_trainer(tmp_path, 4, callbacks=[recorder]).fit(module, random_batches())
    optimizer = module.trainer.optimizers[0]
    assert type(optimizer) is AdamW and optimizer.defaults["lr"] == 2e-4 and optimizer.defaults["weight_decay"] == 0
    assert recorder.lrs == pytest.approx([2e-4 * lr_factor(s, 1, 4, "cosine") for s in range(4)])
    assert recorder.lrs[1] == pytest.approx(2e-4) and recorder.lrs[3] == pytest.approx(5e-5)  # cos(2 pi / 3)


def test_resume_with_a_larger_max_steps_decays_to_zero_at_the_new_end(tmp_path):
    """The schedule's max_steps (None: the trainer's) is this run's, not the checkpoint's: the added steps do not
    train at lr 0."""
    def fit(max_steps, ckpt_path=None):
        module, recorder = SWAAFineTuner(model=TINY, swaa={"window": 8}, lora=LoRASettings(rank=4),
                                         lr_scheduler=partial(WarmupDecay, warmup_steps=1)), LRRecorder()
        checkpoint = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        make_trainer(tmp_path, max_steps, callbacks=[recorder, checkpoint], enable_checkpointing=True).fit(
            module, random_batches(), ckpt_path=ckpt_path)
        return recorder.lrs, module.trainer.lr_scheduler_configs[0].scheduler
    first, _ = fit(2)
    second, scheduler = fit(4, ckpt_path="last")
    assert first + second == pytest.approx([2e-4 * lr_factor(s, 1, 2, "cosine") for s in range(2)]
                                           + [2e-4 * lr_factor(s, 1, 4, "cosine") for s in (2, 3)])
    assert scheduler.max_steps == 4 and second[0] > 0


def test_lora_trains_adapters_only_and_base_is_unchanged(tmp_path):
    module = SWAAFineTuner(model=TINY, swaa={"window": 8, "sink": 2, "fa_decode": True},
                           lora=LoRASettings(rank=4, target_modules="all-linear"), optimizer=partial(AdamW, lr=1e-2))
    reference = build_tiny_model(TINY).state_dict()
    make_trainer(tmp_path, 3).fit(module, random_batches())
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert any("mlp" in n for n in trainable)  # all-linear reached the MLP
    base = module.model.get_base_model().state_dict()
    for name, tensor in reference.items():
        key = name.replace(".weight", ".base_layer.weight") if name.replace(".weight", ".base_layer.weight") in base \
            else name
        torch.testing.assert_close(base[key], tensor, rtol=0, atol=0, msg=name)
    assert any(p.abs().sum() > 0 for n, p in module.model.named_parameters() if "lora_B" in n)  # B starts at zero


def test_full_finetune_has_no_adapters():
    module = built(lora=LoRASettings(full_finetune=True))
    assert all(p.requires_grad for p in module.model.parameters())
    assert not any("lora" in n for n, _ in module.model.named_parameters())
    with pytest.raises(ValueError, match="distill_weight > 0 needs LoRA"):
        SWAAFineTuner(model=TINY, lora=LoRASettings(full_finetune=True), distill_weight=1.0)


def distill_kl(module: SWAAFineTuner, batch: dict[str, torch.Tensor]) -> float:
    columns = supervised_columns(batch["labels"])
    teacher = module._teacher_logits(batch, columns)
    _, logits = module._answer_loss(batch, columns)
    return module._distill_kl(batch, logits, teacher, columns).item()


def test_distillation_teacher_is_base_model_under_full_attention():
    batch = next(iter(random_batches()))
    wide = built(swaa={"window": 64}, distill_weight=1.0)  # window >= length: SWAA equals FA
    assert distill_kl(wide, batch) == pytest.approx(0.0, abs=1e-6)  # LoRA B = 0: student = teacher
    assert distill_kl(built(swaa={"window": 4}, distill_weight=1.0), batch) > 1e-4  # SWA student differs from FA
    torch.nn.init.normal_(next(p for n, p in wide.model.named_parameters() if "lora_B" in n), std=0.5)
    assert distill_kl(wide, batch) > 1e-4  # the teacher keeps the starting adapters (B = 0: the base model)


def test_distillation_teacher_is_the_adapters_the_run_started_from(tmp_path):
    """With init_weights (e.g. the FA teacher's adapters) the teacher is those adapters, not the bare base model."""
    batch = next(iter(random_batches()))
    trained = built(swaa={"window": 64})
    torch.nn.init.normal_(next(p for n, p in trained.model.named_parameters() if "lora_B" in n), std=0.5)
    trained.model.save_pretrained(tmp_path / "teacher")
    started = built(swaa={"window": 64}, distill_weight=1.0, init_weights=str(tmp_path / "teacher"))
    assert distill_kl(started, batch) == pytest.approx(0.0, abs=1e-6)  # student = its starting weights, under FA
    lora_b = next(p for n, p in started.model.named_parameters() if "lora_B" in n)
    torch.nn.init.normal_(lora_b, std=0.5)
    moved = lora_b.detach().clone()
    assert distill_kl(started, batch) > 1e-4
    assert torch.equal(lora_b, moved) and started.model.training  # the teacher's pass left the student as it was


def test_swapped_weights_come_back_after_an_error():
    layer = torch.nn.Linear(2, 2)
    before, other = layer.weight.detach().clone(), torch.zeros(2, 2)
    with pytest.raises(RuntimeError, match="inside"), swapped_weights(layer, {"weight": other}):
        assert torch.equal(layer.weight, other) and layer.weight.requires_grad
        raise RuntimeError("inside")
    assert torch.equal(layer.weight, before)


def test_fit_with_distillation_from_init_weights(tmp_path):
    trained = built()
    torch.nn.init.normal_(next(p for n, p in trained.model.named_parameters() if "lora_B" in n), std=0.5)
    trained.model.save_pretrained(tmp_path / "teacher")
    started = SWAAFineTuner(model=TINY, swaa={"window": 8}, lora=LoRASettings(rank=4), distill_weight=1.0,
                            init_weights=str(tmp_path / "teacher"))
    make_trainer(tmp_path, max_steps=2).fit(started, random_batches())
    lora = {n: p for n, p in started.model.named_parameters() if p.requires_grad}
    assert set(started._start_adapters) == set(lora)
    assert any(not torch.equal(lora[n], w) for n, w in started._start_adapters.items())  # trained away from them
    assert all(not w.requires_grad for w in started._start_adapters.values())


def test_validation_logs_swaa_and_fa_loss(tmp_path):
    results = {}
    for window in (4, 64):
        module = SWAAFineTuner(model=TINY, swaa={"window": window}, lora=LoRASettings(rank=4))
        (metrics,) = make_trainer(tmp_path, 1, limit_val_batches=2).validate(module, random_batches(),
                                                                            verbose=False)
        results[window] = metrics
    assert results[64]["val/loss"] == pytest.approx(results[64]["val/loss_fa"], abs=1e-5)
    assert abs(results[4]["val/loss"] - results[4]["val/loss_fa"]) > 1e-4
    assert results[4]["val/loss_fa"] == pytest.approx(results[64]["val/loss_fa"], abs=1e-5)


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """One synthetic DataModule (SmolLM2 tokenizer) reused by every fit: 6 samples, 3 batches per epoch; 2 validation
    samples (unused unless a fit sets limit_val_batches)."""
    return SyntheticDataModule(tasks=["passkey"], lengths=[128], n_train=6, n_val=2, batch_size=2, seed=1,
                               cache_dir=str(tmp_path_factory.mktemp("cache")))


def _fit(root, data, max_steps, ckpt_path=None, every=None, dropout=0.0, **trainer_args):
    L.seed_everything(0)
    module = SWAAFineTuner(model="tiny:qwen3:2:49152", swaa={"window": 32, "sink": 4, "fa_decode": True},
                           lora=LoRASettings(rank=4, dropout=dropout), optimizer=partial(AdamW, lr=5e-3),
                           lr_scheduler=partial(WarmupDecay, warmup_steps=1, max_steps=4))
    recorder = LossRecorder()
    callbacks = [recorder]
    if every:
        callbacks.append(L.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_train_steps=every))
    make_trainer(root, max_steps, callbacks=callbacks, enable_checkpointing=bool(every),
                 use_distributed_sampler=False, **trainer_args).fit(module, datamodule=data, ckpt_path=ckpt_path)
    return recorder.losses, {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}


def test_exact_resume_mid_epoch_across_epoch_boundary(tmp_path, synthetic):
    straight, params = _fit(tmp_path / "a", synthetic, 4)
    first, _ = _fit(tmp_path / "b", synthetic, 2, every=2)  # step 2 is mid-epoch (3 batches per epoch)
    second, resumed = _fit(tmp_path / "b", synthetic, 4, ckpt_path="last", every=2)
    assert len(straight) == 4 and len(first) == len(second) == 2
    assert first + second == pytest.approx(straight, rel=1e-5)
    assert len(set(straight)) == 4 and all(math.isfinite(x) for x in straight)
    assert params.keys() == resumed.keys()
    for name in params:
        torch.testing.assert_close(resumed[name], params[name], rtol=1e-5, atol=1e-6, msg=name)


def test_exact_resume_with_lora_dropout_restores_the_random_generators(tmp_path, synthetic):
    """The resumed process seeds its generators anew (seed_everything); the checkpoint's states replace them before
    the first resumed step, so the dropout masks are those of an uninterrupted run; the validation after the saved
    step leaves the generators as they were (its loader draws worker seeds from a generator of its own)."""
    validation = {"dropout": 0.5, "val_check_interval": 2, "limit_val_batches": 1}
    straight, params = _fit(tmp_path / "a", synthetic, 3, **validation)
    first, _ = _fit(tmp_path / "b", synthetic, 2, every=2, **validation)
    second, resumed = _fit(tmp_path / "b", synthetic, 3, ckpt_path="last", every=2, **validation)
    assert first + second == pytest.approx(straight, rel=1e-5)
    for name in params:
        torch.testing.assert_close(resumed[name], params[name], rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = next(iter(random_batches()))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # same LoRA init
        module = built(gradient_checkpointing=checkpointing)
        torch.nn.init.normal_(next(p for n, p in module.model.named_parameters() if "lora_B" in n), std=0.1)
        module._answer_loss(batch, supervised_columns(batch["labels"]))[0].backward()
        grads.append({n: p.grad for n, p in module.model.named_parameters() if p.requires_grad})
    assert module.base_model.is_gradient_checkpointing
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)
