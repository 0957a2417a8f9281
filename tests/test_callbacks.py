"""GenerationValidation: logs val/acc per task during a real 1-step fit and leaves the model's state as it was."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from swaa.callbacks import GenerationValidation
from swaa.tasks.generators import make_samples
from swaa.lit import SWAAFineTuner


class _Data(L.LightningDataModule):
    def __init__(self, tokenizer, samples=None, prompts=None):
        super().__init__()
        self.tokenizer = tokenizer
        if samples is not None:
            self.val_samples = lambda: samples
        if prompts is not None:
            self.val_prompts = lambda: prompts

    def _loader(self):
        ids = torch.randint(0, len(self.tokenizer), (1, 32), generator=torch.Generator().manual_seed(0))
        labels = ids.clone()
        labels[:, :16] = -100
        return DataLoader([{"input_ids": ids[0], "attention_mask": torch.ones(32, dtype=torch.long),
                            "labels": labels[0]}], batch_size=1)

    def train_dataloader(self):
        return self._loader()

    def val_dataloader(self):
        return self._loader()


@pytest.fixture(scope="module")
def val_samples(smollm2_tokenizer):
    return (make_samples("passkey", 2, 128, smollm2_tokenizer, split="val")
            + make_samples("niah_single", 1, 128, smollm2_tokenizer, split="val"))


def _fit(tokenizer, callback, **data):
    module = SWAAFineTuner(model="tiny:llama:2:49152", swaa={"window": 16, "sink": 2, "fa_decode": True},
                           gradient_checkpointing=True)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[callback])
    trainer.fit(module, datamodule=_Data(tokenizer, **data))
    return trainer, module


def test_logs_accuracy_per_task_in_a_fit(smollm2_tokenizer, val_samples):
    trainer, module = _fit(smollm2_tokenizer, GenerationValidation(max_samples=3, max_new_tokens=4),
                           samples=val_samples)
    metrics = trainer.callback_metrics
    assert {"val/acc", "val/acc/passkey", "val/acc/niah_single", "val/loss"} <= set(metrics)
    assert 0 <= metrics["val/acc"].item() <= 1
    assert module.model.is_gradient_checkpointing


def test_val_prompts_and_max_samples(smollm2_tokenizer):
    prompts = [{"prompt": f"Say {w}.", "answers": [w], "scorer": "contains"} for w in ("yes", "no", "maybe")]
    trainer, _ = _fit(smollm2_tokenizer, GenerationValidation(max_samples=2, max_new_tokens=2), prompts=prompts)
    assert "val/acc/val" in trainer.callback_metrics


class _Stub:
    def __init__(self, datamodule):
        self.datamodule, self.sanity_checking, self.global_rank, self.world_size = datamodule, False, 0, 1
        self.strategy = SimpleNamespace(model=None)


def test_state_restored_and_every_n_val(smollm2_tokenizer, val_samples):
    module = SWAAFineTuner(model="tiny:llama:2:49152", swaa={"window": 16, "fa_decode": True},
                           gradient_checkpointing=True)
    module.configure_model()
    module.model.train()
    logged = []
    module.log = lambda name, value, **kwargs: logged.append((name, float(value)))
    callback = GenerationValidation(every_n_val=2, max_samples=2, max_new_tokens=2)
    trainer = _Stub(_Data(smollm2_tokenizer, samples=val_samples))
    for _ in range(3):
        callback.on_validation_epoch_end(trainer, module)
        assert module.model.training and module.model.is_gradient_checkpointing
    assert [name for name, _ in logged] == ["val/acc/passkey", "val/acc"] * 2  # validations 1 and 3


def test_static_decode_logs_the_same_accuracy(smollm2_tokenizer, val_samples):
    module = SWAAFineTuner(model="tiny:llama:2:49152", swaa={"window": 16, "sink": 2}, gradient_checkpointing=True)
    module.configure_model()
    module.model.train()
    logged = {"generate": [], "static": []}
    trainer = _Stub(_Data(smollm2_tokenizer, samples=val_samples))
    for decode, values in logged.items():
        module.log = lambda name, value, values=values, **kwargs: values.append((name, float(value)))
        GenerationValidation(max_samples=3, max_new_tokens=6, decode=decode).on_validation_epoch_end(trainer, module)
        assert module.model.training and module.model.is_gradient_checkpointing
    assert logged["static"] == logged["generate"] and logged["static"]
    assert module.model.get_base_model().config._attn_implementation == "swaa_chunked"  # restored


def test_bad_arguments_and_datamodule(smollm2_tokenizer):
    with pytest.raises(ValueError, match="every_n_val=0"):
        GenerationValidation(every_n_val=0)
    with pytest.raises(ValueError, match="decode='fast'"):
        GenerationValidation(decode="fast")
    module = SWAAFineTuner(model="tiny:llama:2:49152")
    with pytest.raises(ValueError, match="needs a datamodule with val_samples"):
        GenerationValidation().on_validation_epoch_end(_Stub(_Data(smollm2_tokenizer)), module)


def test_max_samples_spreads_over_the_ordered_validation_set():
    from swaa.callbacks import _spread
    items = [f"{task}-{i}" for task in "abcd" for i in range(16)]
    picked = _spread(items, 8)
    assert len(picked) == 8 and {p[0] for p in picked} == set("abcd")
    assert _spread(items[:3], 8) == items[:3]
