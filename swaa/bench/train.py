"""Train: LoRA fine-tuning step time, tokens/s and peak memory, FA versus SWAA, on a model with random weights.

Batch 1, gradient checkpointing, LoRA r=16 on q/k/v, last 10% of tokens supervised (logits for those rows only,
swaa.loss), optional fused non-attention kernels (--fuse); each backend is checked against
the reference backend first; untimed warm-up steps per config and length, then min and median of the timed steps."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import torch
from peft import PeftModel

from swaa.attention import BACKENDS
from swaa.bench.common import (DTYPES, SHAPE_HELP, check_fusion, default_device, dtype_name, int_at_least, int_list,
                               model_config, random_model, relative_error, run_metadata, shape_fields, write_results)
from swaa.bench.model import BenchConfig, check_config_depth, parse_configs
from swaa.bench.profile import time_breakdown
from swaa.config import SWAAConfig
from swaa.files import check_output_path
from swaa.fusion import FUSIONS, fuse
from swaa.integration import apply_swaa, check_backends
from swaa.lora import LoRASettings, add_lora
from swaa.loss import answer_logits, answer_loss, supervised_columns
from swaa.models import check_device
from swaa.timing import min_median, warm_then_time

log = logging.getLogger(__name__)
WARMUP_STEPS = 2  # untimed steps per config and length: compilation, allocator growth, optimizer state
ANSWER_FRACTION = 10  # the last 1/ANSWER_FRACTION of the tokens are supervised
CHECK_TOKENS, CHECK_ANSWER_FROM = 1024, 900
CHECK_SWAA = SWAAConfig(window=64, sink=4, fa_decode=True, full_layers="odd")
CHECK_TOLERANCE = 5e-2


def build(shape: str, layers: int | None, dtype: torch.dtype, device: torch.device, max_positions: int,
          fuse_with: str = "none") -> PeftModel:
    """Random weights of `shape` (`layers` deep if given) in train mode with gradient checkpointing and the
    non-attention fusion `fuse_with` (swaa.fusion), LoRA added."""
    overrides: dict[str, Any] = dict(max_position_embeddings=max_positions, attn_implementation="sdpa")
    if layers is not None:
        overrides["num_hidden_layers"] = layers
    model = fuse(random_model(shape, dtype, device, **overrides).train(), fuse_with)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return add_lora(model, LoRASettings())


def step_time(model: PeftModel, length: int, steps: int, device: torch.device,
              profile: bool = False) -> dict[str, Any]:
    """Seconds per optimizer step after WARMUP_STEPS untimed ones (min, median, every step), the last loss, and
    (profile) one more step's time per kernel category."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (1, length), device=device)
    labels = torch.full_like(ids, -100)
    labels[:, -length // ANSWER_FRACTION:] = ids[:, -length // ANSWER_FRACTION:]
    losses = []

    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    columns = supervised_columns(labels)

    def one_step() -> None:
        loss = answer_loss(answer_logits(model, batch, columns), labels, columns)  # logits of answer rows only
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    times = warm_then_time(one_step, device, steps, WARMUP_STEPS)
    out = {**min_median("step_s", [t / 1e3 for t in times]), "loss": losses[-1].item()}
    out["profile"] = time_breakdown(one_step, device)[0] if profile else None
    return out


def check(model: PeftModel, backend: str, device: torch.device) -> float:
    """Relative difference of the loss and LoRA gradients between `backend` and 'reference' (CHECK_TOKENS tokens)."""
    base = model.get_base_model()
    ids = torch.randint(0, model.config.vocab_size, (1, CHECK_TOKENS), device=device)
    labels = torch.where(torch.arange(CHECK_TOKENS, device=device) >= CHECK_ANSWER_FROM, ids, -100)
    results = []
    for name in (backend, "reference"):
        apply_swaa(base, CHECK_SWAA, backend=name)
        model.zero_grad(set_to_none=True)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        columns = supervised_columns(labels)
        loss = answer_loss(answer_logits(model, batch, columns), labels, columns)
        loss.backward()
        results.append(torch.cat([loss.detach().float().reshape(1)] + [p.grad.float().flatten() for p in
                                  model.parameters() if p.requires_grad]))
    model.zero_grad(set_to_none=True)
    return relative_error(results[0], results[1])


def checked_backends(model: PeftModel, backends: list[str], device: torch.device) -> dict[str, float]:
    """Each backend's check error (inf if it raised); failures are logged."""
    errors = {}
    for backend in backends:
        try:
            errors[backend] = check(model, backend, device)
        except Exception:  # a crash fails the check; the other backends still run
            log.exception("backend %r raised in the correctness check", backend)
            errors[backend] = float("inf")
        log.info("backend %r vs reference: relative difference of loss + LoRA gradients %.2e", backend, errors[backend])
        if not errors[backend] < CHECK_TOLERANCE:
            log.error("backend %r failed the correctness check (%.2e); not timing it", backend, errors[backend])
    return errors


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Each row's median step time against the FA row of the same length."""
    fa = {r["length"]: r["step_s"] for r in rows if not r["swaa"]["window"]}
    for r in rows:
        r["speedup"] = fa[r["length"]] / r["step_s"] if r["length"] in fa else None


def run(configs: list[BenchConfig], model: PeftModel, lengths: list[int], backends: list[str], steps: int,
        device: torch.device, profile: bool = False, on_row=None) -> list[dict[str, Any]]:
    """FA once (with the first backend), every SWAA config with every backend, at every length."""
    rows = []
    for length in lengths:
        for cfg in configs:
            for backend in backends[:1] if not cfg.swaa.enabled else backends:
                apply_swaa(model.get_base_model(), cfg.swaa, backend=backend)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                result = step_time(model, length, steps, device, profile)
                peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
                rows.append({"config": cfg.name, "tag": cfg.tag, "swaa": cfg.swaa.to_dict(),
                             "backend": backend if cfg.swaa.enabled else "sdpa", "length": length, **result,
                             "tokens_per_s": length / result["step_s"], "peak_gib": peak})
                add_speedups(rows)
                log.info("%s", rows[-1])
                if on_row is not None:
                    on_row(rows)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    fmt = lambda v, f, suffix="": "n/a" if v is None else format(v, f) + suffix  # noqa: E731
    lines = ["| config | backend | length | step s min / median | tokens/s | speedup vs FA | peak GiB |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} ({r['tag']}) | {r['backend']} | {r['length']} | {r['step_s_min']:.3f} / "
              f"{r['step_s']:.3f} | {r['tokens_per_s']:.0f} | {fmt(r['speedup'], '.2f', 'x')} | "
              f"{fmt(r['peak_gib'], '.1f')} |" for r in rows]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", default="qwen3-4b", help=SHAPE_HELP)
    parser.add_argument("--layers", type=int_at_least(1), default=None, help="depth (default: the shape's)")
    parser.add_argument("--lengths", type=int_list, default=[16384, 32768], help="comma-separated sequence lengths")
    parser.add_argument("--configs", default="fa,swa_all_fad,swa_half_fad",
                        help="comma-separated built-in names, preset names or name=JSON (as in the model job)")
    parser.add_argument("--presets", help="SWAA presets YAML, besides the bundled presets (its names win)")
    parser.add_argument("--window", type=int_at_least(1), default=2048, help="W of the built-in configs")
    parser.add_argument("--sink", type=int_at_least(0), default=64, help="S of the built-in configs")
    parser.add_argument("--steps", type=int_at_least(1), default=3,
                        help=f"timed steps, after {WARMUP_STEPS} warm-up steps")
    parser.add_argument("--backends", default="auto", help="comma-separated SWAA backends to time (FA is timed once)")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--fuse", choices=FUSIONS, default="none",
                        help="fused non-attention kernels for every config alike (swaa.fusion) (default: %(default)s)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one more step per row (untimed): ms per kernel category")
    parser.add_argument("--out", default=None, help="write rows and metadata as JSON here (after every row)")


def check_args(args: argparse.Namespace) -> None:
    """Input errors that argparse cannot see (device, configs against the depth, backends and fusion available
    here), before any work: a ValueError naming the option."""
    device = check_device(args.device, "--device")
    check_output_path(args.out, "--out")
    depth = model_config(args.shape, "--shape").num_hidden_layers  # an unknown shape fails here, --layers or not
    configs = parse_configs(args.configs, args.window, args.sink, args.presets)
    check_config_depth(configs, args.layers or depth)
    if any(c.hf_window is not None for c in configs):
        raise ValueError("--configs: transformers' own sliding window (hf_window) is not benchmarked in training")
    check_backends(parse_backends(args.backends), device, "--backends")
    check_fusion(args.fuse)


def parse_backends(spec: str) -> list[str]:
    """`--backends`: comma-separated attention backend names."""
    backends = [b.strip() for b in spec.split(",") if b.strip()]
    if not backends or any(b not in BACKENDS for b in backends):
        raise ValueError(f"--backends {spec!r}: expected comma-separated names from {sorted(BACKENDS)}")
    return backends


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    backends = parse_backends(args.backends)
    configs = parse_configs(args.configs, args.window, args.sink, args.presets)
    model = build(args.shape, args.layers, DTYPES[dtype_name(args.dtype, device)], device,
                  max(*args.lengths, CHECK_TOKENS), args.fuse)
    errors = checked_backends(model, backends, device)
    timed = [b for b in backends if errors[b] < CHECK_TOLERANCE]
    if not timed:
        raise SystemExit(f"every backend failed the correctness check: {errors}")
    meta = run_metadata(device, args.command, dtype=dtype_name(args.dtype, device), shape=args.shape,
                        model={**shape_fields(args.shape), "num_hidden_layers": model.config.num_hidden_layers},
                        lora=LoRASettings().to_dict(), fuse=args.fuse, loss="answer rows only (swaa.loss)",
                        steps=args.steps, warmup_steps=WARMUP_STEPS,
                        answer_fraction=1 / ANSWER_FRACTION, check_rel_diff=errors,
                        configs=[c.to_dict() for c in configs])
    rows = run(configs, model, args.lengths, timed, args.steps, device, args.profile,
               on_row=lambda rows: write_results(args.out, meta, rows))
    print(markdown(rows))
    for r in rows:
        if r["profile"]:
            print(f"{r['config']} {r['backend']} {r['length']} where the time goes (ms):",
                  {k: round(v, 1) for k, v in r["profile"].items()})
