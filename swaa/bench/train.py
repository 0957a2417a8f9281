"""Training-speed benchmark: LoRA fine-tuning step time and tokens/s, FA versus SWAA, on a model with random weights.

One step = forward + backward + optimizer step on one sequence (batch 1, bf16, gradient checkpointing), the last 10%
of tokens supervised (answer rows). Run on a GPU: python -m swaa.bench_train --lengths 16384 32768 [--profile]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time

import torch
import transformers
from peft import LoraConfig, get_peft_model
from swaa import SWAAConfig, apply_swaa
from swaa.bench import SHAPES
from swaa.files import write_atomic
from swaa.profiling import time_breakdown

log = logging.getLogger(__name__)
CONFIGS = {"fa": SWAAConfig(),
           "swa_all_fad": SWAAConfig(window=2048, sink=64, fa_decode=True),
           "swa_half_fad": SWAAConfig(window=2048, sink=64, fa_decode=True, full_layers="odd")}


def build(layers: int, device: str):
    """Qwen3-4B-shaped model (random bf16 weights), LoRA r=16 on q/k/v, gradient checkpointing."""
    shape = SHAPES["qwen3-4b"]  # the same architecture as the inference benchmark
    config = shape.config_cls(**{**shape.fields, "num_hidden_layers": layers}, max_position_embeddings=131072,
                              attn_implementation="sdpa")
    with torch.device(device):
        model = shape.model_cls(config).to(torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj"]))


def step_time(model, length: int, steps: int, device: str, profile: bool = False) -> tuple[float, float, dict | None]:
    """Median seconds per optimizer step, the last loss, and (profile) one more step's time per kernel category."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (1, length), device=device)
    labels = torch.full_like(ids, -100)
    labels[:, -length // 10:] = ids[:, -length // 10:]

    def one_step() -> torch.Tensor:
        loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times, loss = [], None
    for i in range(steps + 2):
        sync()
        start = time.perf_counter()
        loss = one_step()
        sync()
        if i >= 2:  # warm-up: compilation, allocator
            times.append(time.perf_counter() - start)
    breakdown = time_breakdown(one_step, torch.device(device))[0] if profile else None
    return sorted(times)[len(times) // 2], loss.item(), breakdown


def check(model, backend: str, device: str) -> float:
    """Relative difference of the loss and LoRA gradients between `backend` and 'reference' (short input, W=64)."""
    base, cfg = model.get_base_model(), SWAAConfig(window=64, sink=4, fa_decode=True, full_layers="odd")
    ids = torch.randint(0, model.config.vocab_size, (1, 1024), device=device)
    labels = torch.where(torch.arange(1024, device=device) >= 900, ids, -100)
    results = []
    for name in (backend, "reference"):
        apply_swaa(base, cfg, backend=name)
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        results.append(torch.cat([loss.detach().float().reshape(1)] + [p.grad.float().flatten() for p in
                                  model.parameters() if p.requires_grad]))
    model.zero_grad(set_to_none=True)
    return ((results[0] - results[1]).norm() / results[1].norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768])
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["auto"], help="SWAA backends to time (FA is timed once)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--profile", action="store_true",
                        help="also profile one more step per config (untimed): ms per kernel category")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        raise SystemExit("swaa.bench_train needs a CUDA GPU")
    model = build(args.layers, "cuda")
    base = model.get_base_model()
    errors = {}
    for backend in args.backends:
        try:
            errors[backend] = check(model, backend, "cuda")
        except Exception:  # a crash fails the check; the other backends still run
            log.exception("backend %r raised in the correctness check", backend)
            errors[backend] = float("inf")
        log.info("backend %r vs reference: relative difference of loss + LoRA gradients %.2e", backend, errors[backend])
        if not errors[backend] < 5e-2:
            log.error("backend %r failed the correctness check (%.2e); not timing it", backend, errors[backend])
    timed = [b for b in args.backends if errors[b] < 5e-2]
    if not timed:
        raise SystemExit(f"every backend failed the correctness check: {errors}")
    runs = [("fa", timed[0])] + [(name, b) for b in timed for name in CONFIGS if name != "fa"]
    rows = []
    for length in args.lengths:
        for name, backend in runs:
            cfg = CONFIGS[name]
            apply_swaa(base, cfg, backend=backend)
            torch.cuda.reset_peak_memory_stats()
            t, loss, breakdown = step_time(model, length, args.steps, "cuda", args.profile)
            rows.append({"config": name, "tag": cfg.tag, "backend": backend if cfg.enabled else "sdpa",
                         "length": length, "step_s": t, "tokens_per_s": length / t,
                         "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "loss": loss, "profile": breakdown})
            log.info("%s", rows[-1])
            save(args.out, rows, errors)
    fa = {r["length"]: r["step_s"] for r in rows if r["config"] == "fa"}
    print("| config | backend | length | step s | tokens/s | speedup vs FA | peak GiB |\n|---|---|---|---|---|---|---|")
    for r in rows:
        r["speedup"] = fa[r["length"]] / r["step_s"]
        print(f"| {r['config']} ({r['tag']}) | {r['backend']} | {r['length']} | {r['step_s']:.3f} | "
              f"{r['tokens_per_s']:.0f} | {r['speedup']:.2f}x | {r['peak_gib']:.1f} |")
    for r in rows:
        if r["profile"]:
            log.info("%s %s %d where the time goes (ms): %s", r["config"], r["backend"], r["length"],
                     {k: round(v, 1) for k, v in r["profile"].items()})
    save(args.out, rows, errors)


def save(path: str | None, rows: list[dict], errors: dict[str, float]) -> None:
    """Rows and run metadata as JSON (after every row, so that a run stopped early keeps what it measured)."""
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "command": " ".join(sys.argv), "check_rel_diff": errors}
    log.debug("%s", meta)
    if path:
        write_atomic(path, json.dumps({"rows": rows, "meta": meta}, indent=1) + "\n")


if __name__ == "__main__":
    main()
