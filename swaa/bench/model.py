"""Model: prefill time, decode time per token, peak memory and KV-cache size per SWAA configuration (random weights).

Each config is checked against the float32 reference backend first (a failure is not timed), then gets one untimed
warm-up per length before its timed repeats; decode is timed on the DynamicCache and on StaticDecoder's CUDA graphs."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import gc
import json
import logging
from typing import Any, Callable

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from swaa.attention import BACKENDS
from swaa.bench.common import (DTYPES, HF_SLIDING_TYPES, SHAPE_HELP, check_fusion, default_device, dtype_name,
                               int_at_least, int_list, model_config, random_model, relative_error, run_metadata,
                               shape_fields, write_results)
from swaa.config import SWAAConfig, check_depth, presets_with, resolve_swaa
from swaa.files import check_output_path, write_atomic
from swaa.fusion import FUSIONS, fuse
from swaa.integration import apply_swaa, check_backends, remove_swaa, resolve_backend
from swaa.models import check_device, forward_with_cache
from swaa.static_decode import StaticDecoder
from swaa.timing import min_median, timed_ms

log = logging.getLogger(__name__)

MIN_TOLERANCE = {torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float32: 1e-4}  # relative logits error always passes
CHECK_ROWS = 256  # prefill rows compared in the correctness check (the last ones, beyond window + sink)
CHECK_DECODE = 8  # decode steps compared after that prefill
DEFAULT_CONFIGS = ("fa", "hf_sliding_flex", "swa_all", "swa_all_fad", "swa_half", "swa_half_fad", "swa_quarter",
                   "swa_quarter_fad")
BASELINE = "fa"
Measure = Callable[[PreTrainedModel, int, bool], dict[str, Any]]  # (model, length, static decode?) -> row fields


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One benchmarked configuration: SWAA on a plain model, or transformers' own sliding window (`hf_window`)."""

    name: str
    swaa: SWAAConfig = SWAAConfig()
    hf_window: int | None = None  # every layer "sliding_attention" with this window; SWAA stays off
    attn_implementation: str = "sdpa"  # of the model before SWAA is applied

    def __post_init__(self) -> None:
        if self.hf_window is not None and (not isinstance(self.hf_window, int) or isinstance(self.hf_window, bool)
                                           or self.hf_window < 1):
            raise ValueError(f"config {self.name!r}: hf_window={self.hf_window!r}: expected an int >= 1 or None")
        known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
        if self.attn_implementation not in known:
            raise ValueError(f"config {self.name!r}: attn_implementation={self.attn_implementation!r}: expected one of "
                             f"{known}")
        if self.hf_window is not None and self.swaa.enabled:
            raise ValueError(f"config {self.name!r}: set either hf_window (transformers' sliding window) or an SWAA "
                             "window, not both")

    @property
    def tag(self) -> str:
        if self.hf_window is not None:
            return f"hf-w{self.hf_window}-{self.attn_implementation}"
        return self.swaa.tag if self.swaa.enabled else f"fa-{self.attn_implementation}"

    def reference(self, n_tokens: int) -> SWAAConfig:
        """The SWAA config whose reference backend must reproduce this one on `n_tokens` tokens."""
        if self.swaa.enabled:
            return self.swaa
        return SWAAConfig(window=self.hf_window or n_tokens)  # no window: W >= n is full attention

    @property
    def static_decode(self) -> bool:
        """Also time StaticDecoder steps (not for transformers' own sliding layers: it applies SWAA's masks only)."""
        return self.hf_window is None

    def check_length(self) -> int:
        """Prompt length of the correctness check: CHECK_ROWS rows past the window and the sinks."""
        window = self.swaa.window if self.swaa.enabled else self.hf_window
        return CHECK_ROWS + (window + self.swaa.sink if window else CHECK_ROWS)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tag": self.tag, "swaa": self.swaa.to_dict(), "hf_window": self.hf_window,
                "attn_implementation": self.attn_implementation}


def builtin_configs(window: int, sink: int) -> dict[str, BenchConfig]:
    """The named configurations, with window W and sink S for every SWAA one."""
    configs = [BenchConfig("fa"),
               BenchConfig("hf_sliding_flex", hf_window=window, attn_implementation="flex_attention"),
               BenchConfig("hf_sliding_sdpa", hf_window=window)]
    for name, full_layers in (("swa_all", []), ("swa_half", "odd"), ("swa_quarter", "every:4:from:3")):
        for suffix, fa_decode in (("", False), ("_fad", True)):
            configs.append(BenchConfig(name + suffix, SWAAConfig(window, sink, fa_decode, full_layers)))
    return {c.name: c for c in configs}


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside JSON brackets or strings."""
    parts, depth, in_str, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == '"' and (i == 0 or text[i - 1] != "\\"):
            in_str = not in_str
        elif not in_str and ch in "{[":
            depth += 1
        elif not in_str and ch in "}]":
            depth -= 1
        elif not in_str and depth == 0 and ch == ",":
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_configs(spec: str, window: int, sink: int, presets_path: str | None = None) -> list[BenchConfig]:
    """`name,name=json,...`: built-in names, preset names (bundled, or of `presets_path` too), or JSON of SWAAConfig
    fields plus optional `hf_window` / `attn_implementation`."""
    builtins, configs = builtin_configs(window, sink), []
    presets = presets_with(presets_path)  # read (and checked) even when no name of it is used
    for item in _split_top_level(spec):
        name, sep, body = item.partition("=")
        name = name.strip()
        if sep:
            try:
                fields = json.loads(body)
            except json.JSONDecodeError as e:
                raise ValueError(f"--configs entry {item!r}: invalid JSON ({e})") from e
            if not isinstance(fields, dict):
                raise ValueError(f"--configs entry {item!r}: expected a JSON object of SWAA fields")
            extra = {k: fields.pop(k) for k in ("hf_window", "attn_implementation") if k in fields}
            configs.append(BenchConfig(name, resolve_swaa(fields, where=f"--configs {name}"), **extra))
        elif name in builtins:
            configs.append(builtins[name])
        elif name in presets:
            configs.append(BenchConfig(name, presets[name]))
        else:
            raise ValueError(f"--configs: unknown config {name!r}; built-in: {sorted(builtins)}, presets"
                             f"{' in ' + presets_path if presets_path else ''}: {sorted(presets)}, or give name=JSON")
    if not configs:
        raise ValueError(f"--configs {spec!r}: no config given; name at least one (built-in: {sorted(builtins)})")
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise ValueError(f"--configs: duplicate config names in {names}")
    return configs


def check_config_depth(configs: list[BenchConfig], depth: int) -> None:
    """check_depth for bench configs: an error names the config under --configs."""
    check_depth({cfg.name: cfg.swaa for cfg in configs}, depth, where="--configs")


def build_model(shape: str, cfg: BenchConfig, dtype: torch.dtype, device: torch.device,
                max_positions: int, fuse_with: str = "none") -> PreTrainedModel:
    """The shape's random model (the same weights for every config), with transformers' sliding layers if `cfg`
    asks for them."""
    fields: dict[str, Any] = dict(max_position_embeddings=max_positions, attn_implementation=cfg.attn_implementation)
    if cfg.hf_window is not None:
        layers = model_config(shape).num_hidden_layers
        fields.update(layer_types=["sliding_attention"] * layers, sliding_window=cfg.hf_window, use_sliding_window=True)
    model = random_model(shape, dtype, device, **fields)
    config = model.config
    if cfg.hf_window is not None and (config.sliding_window != cfg.hf_window
                                      or set(config.layer_types) != {"sliding_attention"}):
        raise RuntimeError(f"{type(config).__name__} dropped the sliding window (sliding_window="
                           f"{config.sliding_window}, layer_types={set(config.layer_types)})")
    return fuse(model, fuse_with)


def unsupported_reason(cfg: BenchConfig, shape: str, device: torch.device) -> str | None:
    """Why this config cannot run here (not a failure: nothing to check or time), or None."""
    model_type = model_config(shape).model_type
    if cfg.hf_window is not None and model_type not in HF_SLIDING_TYPES:
        return f"transformers' {model_type} models have no sliding-window layers"
    if cfg.attn_implementation == "flex_attention" and device.type != "cuda":
        return "transformers' flex_attention is compiled with inductor, which fails on CPU (use hf_sliding_sdpa)"
    return None


def prepare(model: PreTrainedModel, cfg: BenchConfig, backend: str) -> None:
    """Apply the config's SWAA (if any) with `backend`; transformers' own sliding window needs nothing."""
    if cfg.swaa.enabled:
        apply_swaa(model, cfg.swaa, backend=backend)


def forward(model: PreTrainedModel, ids: torch.Tensor, cache: DynamicCache, keep: int) -> torch.Tensor:
    """Logits (B, keep, V) of the last `keep` positions, extending `cache`."""
    return forward_with_cache(model, cache, keep, input_ids=ids)


def decode(model: PreTrainedModel, logits: torch.Tensor, cache: DynamicCache, steps: int) -> torch.Tensor:
    """`steps` greedy decode steps from the last logits, one token per forward."""
    for _ in range(steps):
        logits = forward(model, logits[:, -1].argmax(-1, keepdim=True), cache, keep=1)
    return logits


def kv_cache_bytes(cache: DynamicCache) -> int:
    """Bytes of the key and value tensors held in every cache layer."""
    tensors = [t for layer in cache.layers for t in (layer.keys, layer.values) if t is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


def random_ids(vocab: int, length: int, device: torch.device, seed: int) -> torch.Tensor:
    return torch.randint(vocab, (1, length), generator=torch.Generator().manual_seed(seed)).to(device)


def check_logits(model: PreTrainedModel, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    """float32 logits of the last CHECK_ROWS prompt rows, then of teacher-forced decode steps over ids[prompt:]."""
    cache = DynamicCache(config=model.config)
    logits = [forward(model, ids[:, :prompt], cache, keep=CHECK_ROWS)]
    logits += [forward(model, ids[:, t:t + 1], cache, keep=1) for t in range(prompt, ids.shape[1])]
    return torch.cat(logits, 1).float()


def check_static_logits(model: PreTrainedModel, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    """float32 logits of teacher-forced StaticDecoder steps over ids[prompt:] after a prefill of ids[:prompt]."""
    cache = DynamicCache(config=model.config)
    forward(model, ids[:, :prompt], cache, keep=1)
    with StaticDecoder(model, cache, ids.shape[1] - prompt) as decoder:
        return torch.cat([decoder.step(ids[:, t:t + 1]).float() for t in range(prompt, ids.shape[1])], 1)


def check_config(model: PreTrainedModel, cfg: BenchConfig, backend: str) -> dict[str, Any]:
    """Apply `cfg` to the plain `model` and compare its logits with the reference backend in float32.

    Passes if the error is at most twice that of the reference backend in the model's dtype (or MIN_TOLERANCE).
    """
    prompt = cfg.check_length()
    ids = random_ids(model.config.vocab_size, prompt + CHECK_DECODE, model.device, seed=1)
    reference_cfg = cfg.reference(prompt + CHECK_DECODE)
    reference = apply_swaa(copy.deepcopy(model).float(), reference_cfg, backend="reference")
    want = check_logits(reference, ids, prompt)
    del reference
    free_memory(model.device)  # patches that bind forward into a module's __dict__ (liger) leave cycles: collect now
    apply_swaa(model, reference_cfg, backend="reference")
    baseline_error = relative_error(check_logits(model, ids, prompt), want)
    remove_swaa(model)
    prepare(model, cfg, backend)
    error = relative_error(check_logits(model, ids, prompt), want)
    tolerance = max(2 * baseline_error, MIN_TOLERANCE[model.dtype])
    out = {"check_tokens": prompt + CHECK_DECODE, "rel_error": error, "baseline_rel_error": baseline_error,
           "tolerance": tolerance, "passed": error <= tolerance}
    if cfg.static_decode:
        out.update(check_static(model, ids, prompt, want[:, CHECK_ROWS:], tolerance))
    return out


def check_static(model: PreTrainedModel, ids: torch.Tensor, prompt: int, want: torch.Tensor,
                 tolerance: float) -> dict[str, Any]:
    """The StaticDecoder's decode logits against the reference's `want`; a failure or crash only skips its timing."""
    try:
        error = relative_error(check_static_logits(model, ids, prompt), want)
    except Exception as e:
        log.exception("the StaticDecoder check raised")
        return {"static_passed": False, "static_note": f"{type(e).__name__}: {e}"}
    return {"static_rel_error": error, "static_tolerance": tolerance, "static_passed": error <= tolerance}


def measure_once(model: PreTrainedModel, ids: torch.Tensor, decode_tokens: int, static: bool,
                 stock_tokens: int | None = None) -> dict[str, Any]:
    """One prefill (timed) and `stock_tokens` (default `decode_tokens`) greedy steps from its cache (timed as a
    whole); then, if `static`, `decode_tokens` StaticDecoder steps from that cache (its setup, the graph capture
    included, timed apart)."""
    device = ids.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cache = DynamicCache(config=model.config)
    prefill_ms, logits = timed_ms(lambda: forward(model, ids, cache, keep=1), device)
    kv_bytes = kv_cache_bytes(cache)
    stock_tokens = stock_tokens or decode_tokens
    decode_ms, logits = timed_ms(lambda: decode(model, logits, cache, stock_tokens), device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    out = {"prefill_ms": prefill_ms, "decode_ms_per_token": decode_ms / stock_tokens, "kv_bytes": kv_bytes,
           "peak_bytes": peak}
    if static:
        with StaticDecoder(model, cache, decode_tokens + 1) as decoder:
            out["static_setup_ms"], logits = timed_ms(lambda: decoder.greedy(logits, 1), device)
            static_ms, _ = timed_ms(lambda: decoder.greedy(logits, decode_tokens), device)
        out["static_decode_ms_per_token"] = static_ms / decode_tokens
    return out


def measure(model: PreTrainedModel, length: int, static: bool, decode_tokens: int, repeats: int,
            stock_tokens: int | None = None) -> dict[str, Any]:
    """One untimed run at this length (compilation, graph capture, allocator growth), then `repeats` timed runs:
    min, median and every run of each time."""
    ids = random_ids(model.config.vocab_size, length, model.device, seed=length)
    measure_once(model, ids, decode_tokens, static, stock_tokens)  # warm-up, not reported
    runs = [measure_once(model, ids, decode_tokens, static, stock_tokens) for _ in range(repeats)]
    peaks = [r["peak_bytes"] for r in runs]
    out = {"peak_mem_gib": None if None in peaks else max(peaks) / 2**30, "kv_cache_mib": runs[-1]["kv_bytes"] / 2**20}
    for name in ("prefill_ms", "decode_ms_per_token") + (("static_decode_ms_per_token", "static_setup_ms") if static
                                                          else ()):
        out.update(min_median(name, [r[name] for r in runs]))
    return out


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_cell(measure_fn: Measure, model: PreTrainedModel, length: int, static: bool) -> dict[str, Any]:
    """measure_fn's fields with status ok, or status OOM when the device runs out of memory at this length."""
    try:
        return {"status": "ok", **measure_fn(model, length, static)}
    except torch.OutOfMemoryError:
        log.warning("out of memory at length %d", length)
    free_memory(model.device)
    return {"status": "OOM"}


def bench_config(cfg: BenchConfig, shape: str, lengths: list[int], measure_fn: Measure, dtype: torch.dtype,
                 device: torch.device, backend: str, max_positions: int,
                 fuse_with: str = "none") -> list[dict[str, Any]]:
    """Check one config, then measure it at every length; one row per length."""
    base = {"config": cfg.name, "tag": cfg.tag, "backend": backend if cfg.swaa.enabled else cfg.attn_implementation}
    reason = unsupported_reason(cfg, shape, device)
    if reason:
        log.warning("%s: unsupported here (%s)", cfg.name, reason)
        return [{**base, "length": n, "status": "UNSUPPORTED", "note": reason} for n in lengths]
    model = build_model(shape, cfg, dtype, device, max(max_positions, cfg.check_length() + CHECK_DECODE), fuse_with)
    with torch.no_grad():
        try:
            check = check_config(model, cfg, backend)
        except Exception as e:  # a crash is a failed check: reported, not timed, the other configs still run
            log.exception("%s: correctness check raised", cfg.name)
            check = {"passed": False, "note": f"{type(e).__name__}: {e}"}
        base.update(check)
        if not check["passed"]:
            log.error("%s FAILED the correctness check: not timed (%s)", cfg.name, check)
            rows = [{**base, "length": n, "status": "FAILED"} for n in lengths]
        else:
            log.info("%s passed the check: rel. error %.2e (tolerance %.2e)", cfg.name, check["rel_error"],
                     check["tolerance"])
            static = check.get("static_passed", False)
            if cfg.static_decode and not static:
                log.error("%s: the StaticDecoder FAILED its check, its decode is not timed (%s)", cfg.name, check)
            rows = []
            for n in lengths:
                rows.append({**base, "length": n, **measure_cell(measure_fn, model, n, static)})
                log.info("%s", rows[-1])
    del model
    free_memory(device)
    return rows


def run_configs(configs: list[BenchConfig], shape: str, lengths: list[int], measure_fn: Measure, new_tokens: int,
                dtype: torch.dtype, device: str | torch.device, backend: str,
                on_config: Callable[[list[dict[str, Any]]], None] | None = None,
                fuse_with: str = "none") -> list[dict[str, Any]]:
    """bench_config for every config in order; `new_tokens` positions past the longest prompt are decoded.
    `on_config(rows so far)` runs after each config, e.g. to save partial results of a long run."""
    check_config_depth(configs, model_config(shape).num_hidden_layers)  # bad shape or layer: before work
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths={lengths}: expected a non-empty list of lengths >= 1")
    device = torch.device(device)
    backend = resolve_backend(backend, device)
    rows: list[dict[str, Any]] = []
    for cfg in configs:
        rows += bench_config(cfg, shape, lengths, measure_fn, dtype, device, backend, max(lengths) + new_tokens,
                             fuse_with)
        if on_config is not None:
            on_config(rows)
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Prefill and decode speedup (of the medians) of every timed row against the `fa` row of the same length."""
    fa = {r["length"]: r for r in rows if r["config"] == BASELINE and r["status"] == "ok"}
    for r in rows:
        ref = fa.get(r["length"]) if r["status"] == "ok" else None
        r["prefill_speedup"] = ref["prefill_ms"] / r["prefill_ms"] if ref else None
        r["decode_speedup"] = ref["decode_ms_per_token"] / r["decode_ms_per_token"] if ref else None
        static = r.get("static_decode_ms_per_token")
        r["static_decode_speedup"] = ref["static_decode_ms_per_token"] / static if ref and static and \
            ref.get("static_decode_ms_per_token") else None
        r["static_vs_fa_decode"] = ref["decode_ms_per_token"] / static if ref and static else None


def run(configs: list[BenchConfig], shape: str, lengths: list[int], decode_tokens: int = 128, repeats: int = 3,
        dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cuda", backend: str = "auto",
        on_config: Callable[[list[dict[str, Any]]], None] | None = None,
        stock_tokens: int | None = None, fuse_with: str = "none") -> list[dict[str, Any]]:
    """Benchmark every config at every length; rows with ratios against `fa`.

    `stock_tokens` (default `decode_tokens`) sets the DynamicCache decode's steps, `decode_tokens` the static
    decode's."""
    if decode_tokens < 1 or repeats < 1 or (stock_tokens is not None and stock_tokens < 1):
        raise ValueError(f"need decode_tokens >= 1 (got {decode_tokens}), stock_tokens >= 1 (got {stock_tokens}) "
                         f"and repeats >= 1 (got {repeats})")
    measure_fn = functools.partial(measure, decode_tokens=decode_tokens, repeats=repeats, stock_tokens=stock_tokens)

    def with_ratios(rows: list[dict[str, Any]]) -> None:
        add_ratios(rows)
        if on_config is not None:
            on_config(rows)

    return run_configs(configs, shape, lengths, measure_fn, (stock_tokens or decode_tokens) + decode_tokens + 1,
                       dtype, device, backend, on_config=with_ratios, fuse_with=fuse_with)


def _min_median(row: dict[str, Any], name: str, spec: str) -> str:
    value = row.get(name)
    return "n/a" if value is None else f"{row[name + '_min']:{spec}} / {value:{spec}}"


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results table (times: min / median of the repeats), then one line of metadata and the command."""
    def fmt(value, spec: str, suffix: str = "") -> str:
        return "n/a" if value is None else format(value, spec) + suffix

    lines = ["| config | tag | length | prefill ms min / median | prefill vs FA | decode ms/token min / median | "
             "decode vs FA | static decode ms/token min / median | static vs FA static | static vs FA decode | "
             "peak mem GiB | KV cache MiB | check rel. error |",
             "|" + "---|" * 13]
    for r in rows:
        check = fmt(r.get("rel_error"), ".1e")
        if r["status"] != "ok":
            cells = [r["status"]] + ["-"] * 8
        else:
            cells = [_min_median(r, "prefill_ms", ".1f"), fmt(r["prefill_speedup"], ".2f", "x"),
                     _min_median(r, "decode_ms_per_token", ".2f"), fmt(r["decode_speedup"], ".2f", "x"),
                     _min_median(r, "static_decode_ms_per_token", ".2f"),
                     fmt(r.get("static_decode_speedup"), ".2f", "x"), fmt(r.get("static_vs_fa_decode"), ".2f", "x"),
                     fmt(r["peak_mem_gib"], ".2f"), fmt(r["kv_cache_mib"], ".1f")]
        lines.append(f"| {r['config']} | {r['tag']} | {r['length']} | " + " | ".join(cells) + f" | {check} |")
    return "\n".join(lines) + "\n\n" + markdown_meta_line(meta)


def markdown_meta_line(meta: dict[str, Any]) -> str:
    """Markdown lines under a table: the run's settings and versions, then its command."""
    info = {k: v for k, v in meta.items() if k not in ("configs", "command", "model")}
    return ", ".join(f"{k}: {v}" for k, v in info.items()) + f"\n\ncommand: `{' '.join(meta['command'])}`\n"


def add_model_arguments(parser: argparse.ArgumentParser, decode_tokens: int) -> None:
    """Options shared by the model and profile jobs."""
    parser.add_argument("--shape", default="qwen3-4b", help=SHAPE_HELP)
    parser.add_argument("--lengths", type=int_list, default=[16384, 32768, 65536, 131072],
                        help="comma-separated prompt lengths")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help="comma-separated: built-in names, preset names, or name=JSON of SWAAConfig fields "
                             "(plus hf_window, attn_implementation)")
    parser.add_argument("--presets", help="SWAA presets YAML, besides the bundled presets (its names win)")
    parser.add_argument("--window", type=int_at_least(1), default=2048, help="W of the built-in configs")
    parser.add_argument("--sink", type=int_at_least(0), default=64, help="S of the built-in SWAA configs")
    parser.add_argument("--decode-tokens", type=int_at_least(1), default=decode_tokens,
                        help="greedy steps of the static decode")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="auto")
    parser.add_argument("--fuse", choices=FUSIONS, default="none",
                        help="fused non-attention kernels for every config alike (swaa.fusion) (default: %(default)s)")
    parser.add_argument("--out", default=None, help="write rows and metadata as JSON here")
    parser.add_argument("--markdown", default=None, help="write the table as Markdown here")


def model_metadata(args: argparse.Namespace, configs: list[BenchConfig], device: torch.device,
                   **settings: Any) -> dict[str, Any]:
    """run_metadata with the model job's (and profile job's) settings."""
    return run_metadata(device, args.command, dtype=dtype_name(args.dtype, device), shape=args.shape,
                        model=shape_fields(args.shape), backend=args.backend,
                        resolved_backend=resolve_backend(args.backend, device), window=args.window, sink=args.sink,
                        decode_tokens=args.decode_tokens, fuse=args.fuse, **settings,
                        configs=[c.to_dict() for c in configs])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, decode_tokens=128)
    parser.add_argument("--stock-decode-tokens", type=int_at_least(1), default=None,
                        help="greedy steps of the DynamicCache decode (stock transformers, host-bound); "
                             "default: --decode-tokens")
    parser.add_argument("--repeats", type=int_at_least(1), default=3,
                        help="timed runs per config and length, after one warm-up")


def check_args(args: argparse.Namespace) -> None:
    """The model and profile jobs' input errors that argparse cannot see (device, backend and fusion available here,
    configs, their layers against the model's depth), before any work: a ValueError naming the option."""
    device = check_device(args.device, "--device")
    check_backends([args.backend], device, "--backend")
    check_fusion(args.fuse)
    check_output_path(args.out, "--out")
    check_output_path(getattr(args, "markdown", None), "--markdown")
    check_config_depth(parse_configs(args.configs, args.window, args.sink, args.presets),
                       model_config(args.shape, "--shape").num_hidden_layers)


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    configs = parse_configs(args.configs, args.window, args.sink, args.presets)
    meta = model_metadata(args, configs, device, stock_decode_tokens=args.stock_decode_tokens or args.decode_tokens,
                          repeats=args.repeats, warmups="1 per config and length")

    def save(rows: list[dict[str, Any]]) -> None:
        write_results(args.out, meta, rows)
        if args.markdown:
            write_atomic(args.markdown, markdown(rows, meta))

    rows = run(configs, args.shape, args.lengths, args.decode_tokens, args.repeats,
               DTYPES[dtype_name(args.dtype, device)], device, args.backend, on_config=save,
               stock_tokens=args.stock_decode_tokens, fuse_with=args.fuse)
    print(markdown(rows, meta))
