"""swaa.export: merged export of the embedded GGUF model, the trained dtype, the user's umask, and one-line CLI errors.

Checkpoints here are built in-process (random LoRA weights under a train.py fingerprint): export reads nothing else.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as load_safetensors
from transformers import AutoModelForCausalLM, AutoTokenizer

from swaa import SWAAConfig, apply_swaa
from swaa.checkpoints import FINGERPRINT_KEY, MODULE_PREFIX, atomic_torch_save, make_fingerprint
from swaa.generation import generate_answers
from swaa.export import export, main
from swaa.lora import LoRASettings, add_lora
from swaa.models import load_model, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TINY = "tiny:llama:2:128"
LORA = LoRASettings(rank=8, alpha=16)
SWAA = SWAAConfig(window=32, sink=4, fa_decode=True, full_layers="odd")
PROMPTS = ["What is the capital of France?", "Count from one to five.", "Name a colour of the sky at noon."]


def random_adapter(spec: str | None, path: Path, dtype: torch.dtype = torch.float32):
    """`spec` (None: the embedded SmolLM2) with random non-zero LoRA weights, saved as a train.py checkpoint."""
    torch.manual_seed(0)
    model = load_model(spec)
    fingerprint = make_fingerprint(spec, model.config, SWAA, LORA)
    model = add_lora(model, LORA)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_((torch.randn_like(p) * 0.02).to(dtype))
    state = {MODULE_PREFIX + name: p.detach().to(dtype) for name, p in model.named_parameters() if p.requires_grad}
    atomic_torch_save({"state_dict": state, FINGERPRINT_KEY: fingerprint}, path)
    return model, path


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "adapter"])
def test_exported_files_follow_the_umask(tmp_path, umask_027, merge):
    """Folders 0750 and files 0640 under umask 027 (mkdtemp made 0700 folders, safetensors 0600 weights)."""
    out = export(random_adapter(TINY, tmp_path / "a.ckpt")[1], tmp_path / "out", merge=merge)
    paths = [out, *out.rglob("*")]
    assert any(p.suffix == ".safetensors" for p in paths)
    assert {p.name: p.stat().st_mode & 0o777 for p in paths} == {p.name: 0o750 if p.is_dir() else 0o640 for p in paths}


def test_merged_export_is_stored_in_the_trained_dtype(tmp_path):
    ckpt = random_adapter(TINY, tmp_path / "bf16.ckpt", torch.bfloat16)[1]  # as a bf16-true run saves
    merged = export(ckpt, tmp_path / "merged", merge=True)
    tensors = load_safetensors(merged / "model.safetensors")
    assert tensors and {t.dtype for t in tensors.values()} == {torch.bfloat16}


@pytest.mark.slow
def test_merged_export_of_the_embedded_gguf_model_answers_as_base_plus_adapter(tmp_path):
    """The GGUF-loaded SmolLM2 (marked quantized by transformers though its weights are unpacked) merges into a plain
    safetensors folder with the SWAA config and tokenizer: same logits and greedy answers as base + adapter."""
    reference, ckpt = random_adapter(None, tmp_path / "smollm2.ckpt")
    out = export(ckpt, tmp_path / "merged", merge=True)
    config = json.loads((out / "config.json").read_text())
    assert config["swaa"] == SWAA.to_dict() and "quantization_config" not in config
    tensors = load_safetensors(out / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32}

    merged = apply_swaa(AutoModelForCausalLM.from_pretrained(out))  # the SWAA config from config.json
    apply_swaa(reference.get_base_model(), SWAA)
    ids = load_tokenizer()(PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = reference(input_ids=ids).logits
        with reference.disable_adapter():
            assert (reference(input_ids=ids).logits - want).abs().max() > 1e-2  # the adapter matters
        torch.testing.assert_close(merged(input_ids=ids).logits, want, atol=1e-3, rtol=1e-3)
    tokenizer = AutoTokenizer.from_pretrained(out, padding_side="left")  # the folder is self-contained
    assert generate_answers(merged, tokenizer, PROMPTS, max_new_tokens=12) == \
        generate_answers(reference, load_tokenizer(), PROMPTS, max_new_tokens=12)


def run_export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swaa.export", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_cli_names_a_missing_checkpoint_in_one_line(tmp_path):
    result = run_export("--ckpt", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "out"), "--merge")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"swaa.export: error: checkpoint {tmp_path / 'nope.ckpt'} not found"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model, message", [
    ("tiny:llama:0:128", "--model='tiny:llama:0:128': need layers >= 1 and vocab >= 2"),
    ("{tmp}/moved", "--model {tmp}/moved: expected a Hugging Face folder with config.json or a .gguf file"),
    (None, "model {tmp}/moved: expected a Hugging Face folder with config.json or a .gguf file"),
], ids=["bad_tiny_spec", "bad_model_path", "checkpoint_model_path"])
def test_cli_names_the_model_flag_only_when_given(tmp_path, model, message):
    """A bad --model is named as the flag; a checkpoint's own model path that moved keeps the library's `model`."""
    ckpt = random_adapter(TINY, tmp_path / "a.ckpt")[1]
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint[FINGERPRINT_KEY]["model"] = str(tmp_path / "moved")
    atomic_torch_save(checkpoint, ckpt)
    flags = [] if model is None else ["--model", model.format(tmp=tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt", str(ckpt), "--out", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == f"swaa.export: error: {message.format(tmp=tmp_path)}"
