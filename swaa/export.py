"""Export a train.py checkpoint: LoRA merged into a Hugging Face model folder (`--merge`), or the peft adapter alone.

    python -m swaa.export --ckpt runs/smollm2_cpu/checkpoints/last.ckpt --out models/smollm2_cpu --merge
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path

from peft import PeftModel
from transformers import PreTrainedModel

from swaa.checkpoints import FINGERPRINT_KEY, load_adapter, read_checkpoint
from swaa.files import check_output_path
from swaa.models import load_model, load_tokenizer
from swaa.tiny import is_tiny_spec

log = logging.getLogger(__name__)


def _base_model(spec: str, where: str) -> PreTrainedModel:
    return load_model(None if spec.startswith("embedded:") else spec, dtype="auto", where=where)


def _unquantized(model: PreTrainedModel) -> PreTrainedModel:
    """`model` without the quantizer a GGUF load leaves on it (save_pretrained refuses such a model) once every weight
    is a plain floating-point tensor, as after the loader unpacked them; packed weights are an error."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return model
    packed = [name for name, p in model.named_parameters() if not p.is_floating_point()]
    if packed:
        raise ValueError(f"cannot merge into {model.config.quantization_config.quant_method} weights that are still "
                         f"packed ({len(packed)} tensors, e.g. {packed[0]}); load the base model unquantized")
    quantizer.remove_quantization_config(model)
    return model


def _new_folder_beside(out: Path) -> Path:
    """An empty hidden folder next to `out`, with the mode the user's umask gives (mkdtemp's would be 0700)."""
    tmp = out.parent / f".{out.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def _umask_file_modes(folder: Path) -> None:
    """Give every file under `folder` the mode new files get under the user's umask (safetensors writes 0600): the
    folder's own mode, made under that umask, without the execute bits."""
    mode = folder.stat().st_mode & 0o666
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(mode)


def export(ckpt: str | Path, out: str | Path, merge: bool = False, model: str | None = None,
           overwrite: bool = False, where: str = "model") -> Path:
    """Write the trained model (merge) or adapter of `ckpt` to `out`; `model` overrides the base model path, named
    `where` in errors."""
    out = Path(out)
    check_output_path(out, "--out", folder=True)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    checkpoint = read_checkpoint(ckpt)
    fingerprint = checkpoint[FINGERPRINT_KEY]
    spec = model or fingerprint["model"]
    trained = load_adapter(_base_model(spec, where if model else "model"), ckpt)
    if not merge and not isinstance(trained, PeftModel):
        raise ValueError(f"{ckpt} is a full fine-tune (no adapter to save alone); export it with --merge")
    trained_dtype = next(iter(checkpoint["state_dict"].values())).dtype  # bf16 for bf16-true runs
    # the embedded and tiny models have no portable path: their adapters name no base (the loaders' default)
    embedded = is_tiny_spec(spec) or spec.startswith("embedded:")
    tmp = _new_folder_beside(out)
    try:
        if merge:  # merged at the base's precision, then stored in the trained dtype
            merged = trained.merge_and_unload() if isinstance(trained, PeftModel) else trained
            merged = _unquantized(merged).to(trained_dtype)
            merged.config.swaa = fingerprint["swaa"]
            merged.save_pretrained(tmp)
            # the tokenizer trained with: the model's own, or SmolLM2's for the embedded and tiny models
            load_tokenizer(None if embedded else spec).save_pretrained(tmp)
        else:  # the adapter in the dtype it was trained in: lossless, half the size for bf16
            for p in trained.parameters():
                if p.requires_grad:
                    p.data = p.data.to(trained_dtype)
            trained.save_pretrained(tmp, save_embedding_layers=False)  # LoRA only; "auto" would ask the Hub
            (tmp / "README.md").unlink(missing_ok=True)  # peft's blank model card
            config_path = tmp / "adapter_config.json"  # peft fills a missing base path in on save: set it after
            config = json.loads(config_path.read_text())
            config["base_model_name_or_path"] = None if embedded else str(spec)
            config_path.write_text(json.dumps(config, indent=2) + "\n")
        _umask_file_modes(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s (%s) to %s", ckpt, "merged model" if merge else "adapter", out)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a train.py checkpoint (.ckpt)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--merge", action="store_true", help="merge LoRA into the base weights (a full HF model folder)")
    p.add_argument("--model", help="base model path, if it moved since training (default: the one in the checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        export(args.ckpt, args.out, merge=args.merge, model=args.model, overwrite=args.overwrite, where="--model")
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # bad paths and checkpoints; bugs keep a traceback
        sys.exit(f"swaa.export: error: {e}")


if __name__ == "__main__":
    main()
