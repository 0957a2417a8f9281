"""Training checkpoints that hold only trainable weights plus a fingerprint of the setup; atomic writes; load_adapter.

A train.py checkpoint is Lightning's dict (optimizer, schedulers, loops, data-loader state) whose `state_dict` has only
the trainable parameters and whose `swaa_fingerprint` names the model, its architecture, the SWAA and LoRA settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file as load_safetensors
from transformers import PretrainedConfig, PreTrainedModel

from swaa.config import SWAAConfig
from swaa.files import write_atomic
from swaa.lora import LoRASettings, add_lora
from swaa.models import DEFAULT_GGUF, base_model
from swaa.tiny import is_tiny_spec

log = logging.getLogger(__name__)
FINGERPRINT_KEY = "swaa_fingerprint"
MODULE_PREFIX = "model."  # SWAAFineTuner keeps the (peft-wrapped) model in its `model` attribute
ARCH_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here: unreadable, not from train.py, or from a different setup."""


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint file that torch.load cannot read; `reason` says why in one line."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"cannot read checkpoint {path}: {reason}")
        self.path, self.reason = path, reason


def model_id(spec: str | None) -> str:
    """Stable name of a model argument: the tiny spec, 'embedded:<gguf>' for the default, else the absolute path."""
    if spec is None:
        return f"embedded:{DEFAULT_GGUF}"
    return spec if is_tiny_spec(spec) else str(Path(spec).resolve())


def config_hash(config: PretrainedConfig) -> str:
    """Hash of the architecture fields of a model config (dtype, attention backend and SWAA entries excluded)."""
    values = config.to_dict()
    arch = {key: values.get(key) for key in ARCH_KEYS}
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]


def make_fingerprint(spec: str | None, config: PretrainedConfig, swaa: SWAAConfig, lora: LoRASettings) -> dict:
    return {"model": model_id(spec), "model_config": config_hash(config), "swaa": swaa.to_dict(),
            "lora": lora.to_dict()}


def check_fingerprint(saved: dict, current: dict, path: str | Path | None,
                      fields: tuple[str, ...] | None = None) -> None:
    """Raise if the checkpoint's fingerprint differs from the current setup in any of `fields` (default: all)."""
    saved_flat, current_flat = _flatten(saved), _flatten({key: current[key] for key in fields or tuple(current)})
    diffs = [f"{key}: checkpoint has {saved_flat.get(key)!r}, current run has {value!r}"
             for key, value in current_flat.items() if saved_flat.get(key) != value]
    if diffs:
        raise CheckpointError(f"checkpoint {path} comes from a different setup: " + "; ".join(diffs))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return out


def trainable_names(module: torch.nn.Module, prefix: str = "") -> set[str]:
    return {prefix + name for name, p in module.named_parameters() if p.requires_grad}


def check_keys(saved: set[str], expected: set[str], path: str | Path | None) -> None:
    """The saved tensors must be exactly the trainable parameters: no silent partial load."""
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path} does not match the trainable parameters of this model: "
                              f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                              f"(e.g. {unexpected[:3]})")


def load_file(path: str | Path, map_location: Any = "cpu", weights_only: bool | None = True,
              mmap: bool = False) -> Any:
    """torch.load with a one-line error naming the path when the file is missing, corrupt or truncated; `mmap` maps
    the tensors instead of reading them (a cheap check of the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError... for damaged files
        raise UnreadableCheckpoint(path, _load_error(path, e)) from e


def _load_error(path: Path, error: Exception) -> str:
    """Why torch.load failed on `path`, in one line (torch's messages add lines of advice)."""
    if path.stat().st_size == 0:
        return "empty file"
    if not zipfile.is_zipfile(path):
        return "not the zip archive that torch.save writes (truncated, or not a checkpoint)"
    text = str(error).split("WeightsUnpickler error:")[-1]  # weights_only refusals: the reason follows the advice
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {line.split('. ')[0]}" if line else type(error).__name__


def read_checkpoint(path: str | Path, map_location: Any = "cpu", weights_only: bool | None = True) -> dict:
    """Load a train.py checkpoint; a missing, corrupt, truncated or foreign file raises naming the path."""
    checkpoint = load_file(path, map_location, weights_only)
    if not isinstance(checkpoint, dict) or FINGERPRINT_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a train.py checkpoint (no {FINGERPRINT_KEY!r} entry)")
    return checkpoint


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save through `write_atomic`: readers never see a partial checkpoint."""
    write_atomic(path, lambda f: torch.save(obj, f))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO with atomic local writes and a clear error for unreadable files.

    Lightning also passes other files through it (ddp_spawn's weights); SWAAFineTuner.on_load_checkpoint checks
    the fingerprint of training checkpoints.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO does not take storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: str | Path, map_location: Callable | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return load_file(path, map_location=map_location, weights_only=weights_only)


def load_trained_weights(model: PreTrainedModel | PeftModel, path: str | Path,
                         lora: LoRASettings | None = None) -> None:
    """Copy the trainable weights of a train.py checkpoint or a peft adapter folder (e.g. data/adapters/teacher_fa)
    into `model`, which must have the same architecture and LoRA settings."""
    if Path(path).is_dir():
        _load_adapter_folder(model, Path(path), lora)
    else:
        _load_trained_state(model, read_checkpoint(path), path, lora)


def _adapter_files(folder: Path) -> tuple[Path, Path]:
    """The config and weights files of a peft adapter folder; an error names what is missing."""
    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    missing = [f.name for f in (config_file, weights_file) if not f.is_file()]
    if missing:
        raise CheckpointError(f"{folder} is not a peft adapter folder: {', '.join(missing)} missing")
    return config_file, weights_file


def _check_adapter_keys(model: PeftModel, saved: set[str], folder: Path) -> None:
    """The folder's tensors must be exactly the model's LoRA tensors (an adapter of another depth loads partially)."""
    # save_embedding_layers=False: peft's default would ask the Hub about the base model's config (no network here)
    check_keys(saved, set(get_peft_model_state_dict(model, save_embedding_layers=False)), folder)


def _load_adapter_folder(model: PreTrainedModel | PeftModel, folder: Path, lora: LoRASettings | None) -> None:
    config_file, weights_file = _adapter_files(folder)
    if not isinstance(model, PeftModel):
        raise CheckpointError(f"{folder} holds LoRA adapters, but this model has none (lora.full_finetune is set)")
    saved = json.loads(config_file.read_text())
    if lora is not None:
        fields = {"rank": ("r", lora.rank), "alpha": ("lora_alpha", lora.alpha), "rslora": ("use_rslora", lora.rslora)}
        differ = [f"lora.{name}: adapter has {saved.get(key)!r}, current run has {value!r}"
                  for name, (key, value) in fields.items() if saved.get(key) != value]
        if differ:
            raise CheckpointError(f"adapter {folder} was trained with other LoRA settings: {'; '.join(differ)}")
    state = load_safetensors(weights_file)
    _check_adapter_keys(model, set(state), folder)
    set_peft_model_state_dict(model, state)
    log.info("loaded %d trained tensors from %s", len(state), folder)


def _load_trained_state(model: PreTrainedModel | PeftModel, checkpoint: dict, path: str | Path,
                        lora: LoRASettings | None) -> None:
    saved = checkpoint[FINGERPRINT_KEY]
    current = {"model_config": config_hash(base_model(model).config)}
    if lora is not None:
        current["lora"] = lora.to_dict()
    check_fingerprint(saved, current, path)
    state = {k.removeprefix(MODULE_PREFIX): v for k, v in checkpoint["state_dict"].items()}
    check_keys(set(state), trainable_names(model), path)
    model.load_state_dict(state, strict=False)
    log.info("loaded %d trained tensors from %s", len(state), path)


def load_adapter(model: PreTrainedModel, path: str | Path) -> PreTrainedModel:
    """`model` with trained weights from a peft adapter folder or a train.py .ckpt (LoRA: returns the peft model)."""
    path = Path(path)
    if path.is_dir():
        _, weights_file = _adapter_files(path)
        try:
            model = PeftModel.from_pretrained(model, str(path))
        except RuntimeError as e:  # torch's "size mismatch" for an adapter of another width
            raise CheckpointError(f"adapter {path} does not fit this model: {str(e).splitlines()[-1].strip()}") from e
        with safe_open(weights_file, framework="pt") as f:  # the names alone: peft has loaded the tensors
            _check_adapter_keys(model, set(f.keys()), path)
        return model
    checkpoint = read_checkpoint(path)
    lora = LoRASettings(**checkpoint[FINGERPRINT_KEY]["lora"])
    model = add_lora(model, lora)
    _load_trained_state(model, checkpoint, path, lora)
    return model
