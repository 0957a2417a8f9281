"""Checkpoints: only trainable weights + fingerprint, clear errors for foreign/damaged files, atomic writes,
load_adapter and swaa.export."""

import json
import os
from functools import partial

import lightning.pytorch as L
import peft.utils.save_and_load
import pytest
import torch
from test_lit import TINY, make_trainer, random_batches
from transformers import AutoModelForCausalLM

import swaa.export
from swaa.checkpoints import (FINGERPRINT_KEY, CheckpointError, UnreadableCheckpoint, atomic_torch_save, load_adapter,
                              load_file, load_trained_weights, read_checkpoint)
from swaa.export import export
from swaa.integration import swaa_disabled
from swaa.lit import SWAAFineTuner
from swaa.lora import LoRASettings, add_lora
from swaa.optim import AdamW
from swaa.tiny import build_tiny_model

SWAA = {"window": 8, "sink": 2, "fa_decode": True}


def module(**kwargs) -> SWAAFineTuner:
    return SWAAFineTuner(**{"model": TINY, "swaa": SWAA, "lora": LoRASettings(rank=4),
                            "optimizer": partial(AdamW, lr=1e-2), **kwargs})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A module trained 2 steps and its last.ckpt."""
    root = tmp_path_factory.mktemp("trained")
    L.seed_everything(0)
    lit = module()
    ckpt = L.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
    make_trainer(root, 2, callbacks=[ckpt], enable_checkpointing=True).fit(lit, random_batches())
    return lit, root / "ckpt" / "last.ckpt"


def resume(path, root, **kwargs) -> None:
    make_trainer(root, 3).fit(module(**kwargs), random_batches(), ckpt_path=path)


def test_checkpoint_holds_only_trainable_weights_and_fingerprint(trained):
    lit, path = trained
    ckpt = read_checkpoint(path)
    trainable = {n for n, p in lit.named_parameters() if p.requires_grad}
    assert set(ckpt["state_dict"]) == trainable and all(".lora_" in k for k in trainable)
    assert ckpt[FINGERPRINT_KEY] == {"model": TINY, "model_config": ckpt[FINGERPRINT_KEY]["model_config"],
                                     "swaa": {**SWAA, "full_layers": []}, "lora": LoRASettings(rank=4).to_dict()}
    assert ckpt["optimizer_states"] and ckpt["lr_schedulers"] and ckpt["global_step"] == 2
    assert not [f for f in os.listdir(path.parent) if f.endswith(".tmp")]


@pytest.mark.parametrize("change, message", [
    ({"swaa": {"window": 16}}, "swaa.window: checkpoint has 8, current run has 16"),
    ({"lora": LoRASettings(rank=8)}, "lora.rank: checkpoint has 4, current run has 8"),
    ({"model": "tiny:llama:3:128"}, "model: checkpoint has 'tiny:llama:2:128'"),
])
def test_resume_with_a_different_setup_is_refused(trained, tmp_path, change, message):
    with pytest.raises(CheckpointError, match=message):
        resume(trained[1], tmp_path, **change)


def test_damaged_checkpoints_are_refused(trained, tmp_path):
    data = trained[1].read_bytes()
    truncated, garbage, partial = tmp_path / "truncated.ckpt", tmp_path / "garbage.ckpt", tmp_path / "partial.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage.write_bytes(b"not a checkpoint" * 10)
    ckpt = torch.load(trained[1], weights_only=True)
    ckpt["state_dict"].popitem()
    torch.save(ckpt, partial)
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match=f"cannot read checkpoint {path}: not the zip archive that torch.save "
                                                  r"writes \(truncated, or not a checkpoint\)$"):
            resume(path, tmp_path)
    with pytest.raises(CheckpointError, match="does not match the trainable parameters.*1 missing"):
        resume(partial, tmp_path)
    with pytest.raises(CheckpointError, match="does not match the trainable parameters.*1 missing"):
        load_adapter(build_tiny_model(TINY), partial)
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not a train.py checkpoint"):
        read_checkpoint(tmp_path / "foreign.ckpt")


@pytest.mark.parametrize("mmap", [False, True])
def test_unreadable_files_name_the_reason_in_one_line(tmp_path, mmap):
    """torch's own messages run over several lines of advice; load_file says what is wrong in one."""
    empty, garbage, pickled = tmp_path / "empty.ckpt", tmp_path / "garbage.ckpt", tmp_path / "pickled.ckpt"
    empty.write_bytes(b"")
    garbage.write_bytes(b"not a checkpoint" * 10)
    torch.save({"state_dict": {}, "object": LoRASettings()}, pickled)  # a zip, but weights_only refuses the object
    for path, reason in ((empty, "empty file"),
                         (garbage, "not the zip archive that torch.save writes (truncated, or not a checkpoint)"),
                         (pickled, "UnpicklingError: Unsupported global: GLOBAL swaa.lora.LoRASettings was not an "
                                   "allowed global by default")):
        with pytest.raises(UnreadableCheckpoint) as error:
            load_file(path, mmap=mmap)
        assert (str(error.value), error.value.reason) == (f"cannot read checkpoint {path}: {reason}", reason)
    with pytest.raises(FileNotFoundError, match="nope.ckpt not found"):
        load_file(tmp_path / "nope.ckpt", mmap=mmap)
    assert load_file(pickled, weights_only=False, mmap=mmap)["object"] == LoRASettings()


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a.ckpt"
    atomic_torch_save({"x": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"x": torch.zeros(2), "bad": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert os.listdir(tmp_path) == ["a.ckpt"]


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_load_adapter_and_export_reproduce_the_trained_model(trained, tmp_path):
    lit, path = trained
    ids = next(iter(random_batches()))["input_ids"]
    with swaa_disabled(lit.base_model):
        expected = logits(lit.model.eval(), ids)
    assert not torch.allclose(expected, logits(build_tiny_model(TINY), ids))  # training changed the outputs
    torch.testing.assert_close(logits(load_adapter(build_tiny_model(TINY), path), ids), expected)

    merged = export(path, tmp_path / "merged", merge=True)
    config = json.loads((merged / "config.json").read_text())
    assert config["swaa"] == {**SWAA, "full_layers": []}
    assert any(f.suffix == ".safetensors" for f in merged.iterdir())
    assert (merged / "tokenizer.json").is_file()  # evaluate.py --model merged needs it
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(merged), ids), expected)

    adapter = export(path, tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] is None  # a tiny model: no path that would mean anything elsewhere
    assert not (adapter / "README.md").exists()
    torch.testing.assert_close(logits(load_adapter(build_tiny_model(TINY), adapter), ids), expected)
    with pytest.raises(FileExistsError, match="overwrite"):
        export(path, adapter)


def test_load_adapter_refuses_another_architecture(trained):
    with pytest.raises(CheckpointError, match="model_config"):
        load_adapter(build_tiny_model("tiny:llama:3:128"), trained[1])


def test_an_adapter_folder_of_another_depth_or_width_is_refused(trained, tmp_path):
    """evaluate.py / swaa.select load adapter folders through peft, which skips tensors a deeper model lacks and leaves
    the extra layers' LoRA untrained: the folder's tensors must be the model's LoRA tensors exactly."""
    adapter = export(trained[1], tmp_path / "adapter")
    depth = int(TINY.split(":")[2])
    for other in (depth - 1, depth + 1):
        with pytest.raises(CheckpointError, match="does not match the trainable parameters"):
            load_adapter(build_tiny_model(TINY.replace(f":{depth}:", f":{other}:", 1)), adapter)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_adapter(build_tiny_model(TINY, hidden_size=32, intermediate_size=64), adapter)
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter_model.safetensors missing"):
        load_adapter(build_tiny_model(TINY), adapter)


def test_init_weights_starts_a_new_run_from_a_checkpoint(trained):
    lit, path = trained
    started = module(swaa={"window": 4}, init_weights=str(path))  # another SWAA config: e.g. the FA teacher's
    started.configure_model()
    for name, p in lit.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(dict(started.named_parameters())[name], p)
    with pytest.raises(CheckpointError, match="lora.rank: checkpoint has 4, current run has 8"):
        module(lora=LoRASettings(rank=8), init_weights=str(path)).configure_model()


def test_init_weights_from_an_exported_adapter_folder(trained, tmp_path):
    lit, path = trained
    folder = export(path, tmp_path / "adapter")
    started = module(init_weights=str(folder))
    started.configure_model()
    for name, p in lit.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(dict(started.named_parameters())[name], p)
    with pytest.raises(CheckpointError, match="lora.alpha: adapter has 32, current run has 8"):
        module(lora=LoRASettings(rank=4, alpha=8), init_weights=str(folder)).configure_model()
    with pytest.raises(CheckpointError, match=r"4 missing .*o_proj\.lora_A"):  # the file has no o_proj adapters
        module(lora=LoRASettings(rank=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
               init_weights=str(folder)).configure_model()
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter_model.safetensors missing"):
        module(init_weights=str(folder)).configure_model()


def test_adapter_export_keeps_the_trained_dtype(trained, tmp_path):
    from safetensors.torch import load_file as load_safetensors
    checkpoint = read_checkpoint(trained[1])
    checkpoint["state_dict"] = {k: v.to(torch.bfloat16) for k, v in checkpoint["state_dict"].items()}
    atomic_torch_save(checkpoint, tmp_path / "bf16.ckpt")  # as a bf16-true run saves it
    adapter = export(tmp_path / "bf16.ckpt", tmp_path / "adapter")
    tensors = load_safetensors(adapter / "adapter_model.safetensors")
    assert tensors and all(t.dtype == torch.bfloat16 for t in tensors.values())
    ids = next(iter(random_batches()))["input_ids"]
    torch.testing.assert_close(logits(load_adapter(build_tiny_model(TINY), adapter), ids),
                               logits(load_adapter(build_tiny_model(TINY), tmp_path / "bf16.ckpt"), ids))  # lossless


def test_adapter_load_and_export_never_ask_the_hub(trained, tmp_path, monkeypatch):
    """With a named base model, peft's default (save_embedding_layers="auto") asks the Hub whether the base's config
    exists, on save and on listing the adapter keys; nothing may reach a hub at run time."""
    def no_hub(repo_id, *args, **kwargs):
        raise AssertionError(f"asked the Hub about {repo_id}")

    def named(model):
        model.name_or_path = "org/base-model"  # as a from_pretrained model has, and peft records
        return model

    monkeypatch.setattr(peft.utils.save_and_load, "check_file_exists_on_hf_hub", no_hub)
    base_model = swaa.export._base_model
    monkeypatch.setattr(swaa.export, "_base_model", lambda spec, where: named(base_model(spec, where)))
    folder = export(trained[1], tmp_path / "adapter")
    model = add_lora(named(build_tiny_model(TINY)), LoRASettings(rank=4))
    load_trained_weights(model, folder)
    assert model.peft_config["default"].base_model_name_or_path == "org/base-model"
