"""What every benchmark shares besides the timer (swaa/timing.py): run metadata, relative error, the random-weight
model shapes, and writing results."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import platform
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from swaa.cli import int_at_least
from swaa.files import write_atomic
from swaa.fusion import fusion_unavailable
from swaa.tiny import SPEC_HELP, is_tiny_spec, tiny_config

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# random-weight shapes of real models; small models come from a `tiny:<family>:<layers>:<vocab>` spec (swaa.tiny)
SHAPES = {
    "qwen3-4b": dict(model_type="qwen3", num_hidden_layers=36, hidden_size=2560, intermediate_size=9728,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936, rope_theta=1e6,
                     tie_word_embeddings=True),
    "smollm2": dict(model_type="llama", num_hidden_layers=30, hidden_size=576, intermediate_size=1536,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152, rope_theta=1e5,
                    rms_norm_eps=1e-5, tie_word_embeddings=True),
}
HF_SLIDING_TYPES = ("qwen3",)  # model types whose transformers classes honour layer_types="sliding_attention"
SHAPE_HELP = f"one of {sorted(SHAPES)} (random weights) or {SPEC_HELP}"


def model_config(shape: str, where: str = "shape", **overrides: Any) -> PretrainedConfig:
    """The config of a named shape or a tiny spec, with `overrides` replacing fields; an unknown or malformed `shape` is
    an error naming `where`."""
    if is_tiny_spec(shape):
        return tiny_config(shape, where, **overrides)
    if shape not in SHAPES:
        raise ValueError(f"{where}={shape!r}: expected {SHAPE_HELP}")
    return AutoConfig.for_model(**{**SHAPES[shape], **overrides})


def shape_fields(shape: str) -> dict[str, Any]:
    """The architecture of a shape as recorded next to its numbers."""
    config = model_config(shape)
    return {k: getattr(config, k, None) for k in ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size",
                                                  "num_attention_heads", "num_key_value_heads", "head_dim",
                                                  "vocab_size")}


def random_model(shape: str, dtype: torch.dtype, device: torch.device | str, seed: int = 0,
                 **overrides: Any) -> PreTrainedModel:
    """A model of `shape` with random weights (the same for the same seed), created directly on `device` in `dtype`."""
    config = model_config(shape, **overrides)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want||, computed in the dtype of `want`."""
    return ((got.to(want.dtype) - want).norm() / want.norm()).item()


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def dtype_name(name: str | None, device: torch.device) -> str:
    """`name`, or bf16 on CUDA and fp32 elsewhere when None."""
    return name or ("bf16" if device.type == "cuda" else "fp32")


OPTIONAL_KERNELS = ("flash-attn-4", "nvidia-cutlass-dsl", "nvidia-cudnn-frontend", "liger-kernel")


def installed_versions(names: tuple[str, ...] = OPTIONAL_KERNELS) -> dict[str, str]:
    """Versions of the distributions `names` installed here; absent ones are left out."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def run_metadata(device: torch.device, command: list[str], **settings: Any) -> dict[str, Any]:
    """Versions (the optional kernel packages too), device, timer, date and command line of a run, then its
    `settings` (dtype, shape, ...)."""
    return {"device": device.type, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "packages": installed_versions(),
            "timer": "CUDA events" if device.type == "cuda" else "perf_counter",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command, **settings}


def write_results(path: str | None, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Rows and metadata as JSON at `path` (atomically; nothing without a path)."""
    if path:
        write_atomic(path, json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


def check_fusion(how: str, flag: str = "--fuse") -> None:
    """Before any work: a ValueError naming `flag` when fusion `how` cannot be applied here."""
    if (reason := fusion_unavailable(how)) is not None:
        raise ValueError(f"{flag} {how}: {reason}")


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated integers >= 1, at least one."""
    values = [v for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return [int_at_least(1)(v) for v in values]
