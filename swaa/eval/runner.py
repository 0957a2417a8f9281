"""Evaluate one model over a grid of SWAA configurations x tasks x lengths, resuming from a result store."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from swaa import SWAAConfig, apply_swaa, load_presets, remove_swaa
from swaa.config import resolve_swaa
from swaa.checkpoints import load_adapter
from swaa.eval.datasets import load_eval_file
from swaa.eval.generate import DECODE_MODES, chat_token_ids, generate_answers, measure_speed
from swaa.eval.results import ResultStore, make_key, path_identity, text_identity
from swaa.eval.scorers import SCORERS, JudgeScorer, score
from swaa.eval.tasks import TASKS, Sample, make_samples, train_answer
from swaa.models import base_model, default_model_path, load_config, load_model, load_tokenizer
from swaa.tiny import is_tiny_spec

log = logging.getLogger(__name__)
DEFAULT_GRID = resources.files("swaa") / "grid.yaml"  # evaluate.py's default grid, bundled with the package
GRID_SETTINGS = ("tasks", "lengths", "n", "seed", "max_new_tokens", "batch_size")
JUDGE = "judge"


def _named_configs(spec: Any, presets_path: str | Path | None, where: str) -> dict[str, SWAAConfig]:
    """A list of preset names, or a mapping of name -> config dict (or preset name), as SWAA configs."""
    if isinstance(spec, list):
        spec = {name: name for name in spec}
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"{where}: expected a non-empty list of preset names or a mapping name -> SWAA config")
    presets = load_presets(presets_path) if any(isinstance(v, str) for v in spec.values()) else {}
    return {str(name): resolve_swaa(value, presets, f"{where}: config {name}") for name, value in spec.items()}


def load_grid(path: str | Path, presets_path: str | Path | None = None) -> tuple[dict[str, SWAAConfig], dict[str, Any]]:
    """(configs, settings) from a grid YAML: `configs` plus optional defaults for GRID_SETTINGS."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read grid file {path}: {e}") from e
    if not isinstance(data, dict) or "configs" not in data:
        raise ValueError(f"{path}: expected a mapping with a 'configs' key")
    unknown = sorted(set(data) - {"configs", *GRID_SETTINGS})
    if unknown:
        raise ValueError(f"{path}: unknown grid key(s) {unknown}; allowed: configs, {', '.join(GRID_SETTINGS)}")
    settings = {k: v for k, v in data.items() if k != "configs"}
    return _named_configs(data["configs"], presets_path, str(path)), settings


def parse_swaa_spec(spec: str, presets_path: str | Path | None = None) -> dict[str, SWAAConfig]:
    """--swaa value: inline JSON (one config, or name -> config) or comma-separated preset names."""
    spec = spec.strip()
    if spec.startswith("{"):
        try:
            data = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ValueError(f"--swaa {spec!r}: invalid JSON ({e})") from e
        if not data or set(data) <= {f.name for f in dataclasses.fields(SWAAConfig)}:
            config = resolve_swaa(data, where="--swaa")
            return {config.tag: config}
        return _named_configs(data, presets_path, "--swaa")
    names = [s.strip() for s in spec.split(",") if s.strip()]
    return _named_configs(names, presets_path, "--swaa")


@dataclasses.dataclass
class _Cell:
    task: str
    length: int | None
    samples: list[Sample]

    @property
    def label(self) -> str:
        return self.task if self.length is None else f"{self.task}@{self.length}"


def _check_settings(configs: dict[str, SWAAConfig], tasks: list[str] | None, lengths: list[int] | None, n: int,
                    max_new_tokens: int, batch_size: int, scorer: str | None, data_file: Any,
                    judge_model: Any) -> None:
    if not configs or not all(isinstance(c, SWAAConfig) for c in configs.values()):
        raise ValueError(f"configs: expected a non-empty mapping name -> SWAAConfig, got {configs!r}")
    for name, value in (("n", n), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected an int >= 1")
    if data_file is None:
        if not tasks or not lengths:
            raise ValueError("give tasks and lengths for synthetic tasks, or a data file")
        bad = [t for t in tasks if t not in TASKS]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; allowed: {', '.join(TASKS)}")
        bad = [x for x in lengths if not isinstance(x, int) or x < 1]
        if bad:
            raise ValueError(f"lengths {bad}: expected ints >= 1")
    elif tasks or lengths:
        raise ValueError("a data file brings its own samples: do not also give tasks or lengths")
    if scorer is not None and scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; allowed: {', '.join(SCORERS)}")
    if (scorer == JUDGE) != (judge_model is not None):
        raise ValueError("the judge scorer needs a judge model and a judge model needs scorer='judge'")


def _check_context(lengths: dict[str, int], context: int, max_new_tokens: int) -> None:
    """Every prompt length (by cell name) plus the new tokens must fit the model's max_position_embeddings."""
    too_long = {cell: length for cell, length in lengths.items() if length + max_new_tokens > context}
    if too_long:
        raise ValueError(f"prompt lengths {too_long} + {max_new_tokens} new tokens exceed the model context of "
                         f"{context} tokens (max_position_embeddings); use lengths <= {context - max_new_tokens}")


def _warn_short_answers(cells: list[_Cell], tokenizer: PreTrainedTokenizerBase, max_new_tokens: int) -> None:
    """Warn about cells whose reference answer (values joined by commas, plus the end token) needs more new tokens
    than allowed: their multi-value answers would be cut and scored as partly wrong."""
    need = {c.label: max(len(tokenizer(train_answer(s), add_special_tokens=False).input_ids) + 1 for s in c.samples)
            for c in cells}
    short = {label: n for label, n in need.items() if n > max_new_tokens}
    if short:
        log.warning("max_new_tokens=%d is below the reference answer length (tokens) of %s: those answers get cut; "
                    "raise max_new_tokens to %d", max_new_tokens, short, max(short.values()))


def _generate_with_backoff(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int,
                           decode: str) -> list[str]:
    """generate_answers, halving the batch after a CUDA out-of-memory error (other jobs may share the GPU)."""
    while True:
        try:
            return generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                    decode=decode)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size //= 2
            torch.cuda.empty_cache()
            log.warning("out of GPU memory: generating this cell again with batch_size %d", batch_size)


def _evaluate_cell(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase, cell: _Cell,
                   scorer: str | None, judge: JudgeScorer | None, max_new_tokens: int, batch_size: int,
                   decode: str) -> tuple[list[float], list[dict[str, Any]], int, float]:
    """Generate and score one cell: (scores, per-sample outputs, unparsed judge verdicts, seconds).

    Unparsed judge verdicts count as wrong; `scorer` None uses each sample's own scorer.
    """
    t0 = time.perf_counter()
    predictions = _generate_with_backoff(model, tokenizer, [s.prompt for s in cell.samples], max_new_tokens,
                                         batch_size, decode)
    if judge is not None:
        verdicts = judge([s.prompt for s in cell.samples], predictions, [s.answers for s in cell.samples])
        scores = [float(bool(v)) for v in verdicts]
    else:
        scores = [score(scorer or s.scorer, p, s.answers, s.choices) for s, p in zip(cell.samples, predictions)]
        verdicts = scores
    samples = [{"id": s.id, "task": s.task, "length": s.length, "depth": s.depth, "answers": s.answers,
                "prediction": p, "score": v} for s, p, v in zip(cell.samples, predictions, verdicts)]
    return scores, samples, sum(v is None for v in verdicts), time.perf_counter() - t0


def _model_identity(model_path: str | Path | None) -> tuple[str, str, int]:
    """(name, identity hash, context length) of a model path or tiny spec, without loading its weights."""
    if is_tiny_spec(model_path):
        return str(model_path), str(model_path), load_config(model_path).max_position_embeddings
    path = Path(model_path) if model_path is not None else default_model_path()
    return str(path), path_identity(path), load_config(path).max_position_embeddings


def _load_model(model_path: str | Path | None, adapter: str | Path | None, device: str) -> PreTrainedModel | PeftModel:
    model = load_model(model_path, device=device)
    return load_adapter(model, adapter) if adapter is not None else model


def _make_cells(tasks: list[str] | None, lengths: list[int] | None, n: int, seed: int,
                file_samples: list[Sample] | None, tokenizer: PreTrainedTokenizerBase) -> list[_Cell]:
    """Synthetic cells per (task, length), or one cell per task of a data file (length None)."""
    if file_samples is None:
        return [_Cell(t, x, make_samples(t, n, x, tokenizer, seed=seed)) for t in tasks for x in lengths]
    by_task: dict[str, list[Sample]] = {}
    for s in file_samples:
        by_task.setdefault(s.task, []).append(s)
    return [_Cell(t, None, samples) for t, samples in by_task.items()]


def run_grid(
    model_path: str | Path | None = None,
    adapter: str | Path | None = None,
    configs: dict[str, SWAAConfig] | None = None,
    tasks: list[str] | None = None,
    lengths: list[int] | None = None,
    n: int = 10,
    seed: int = 0,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    scorer: str | None = None,
    data_file: str | Path | None = None,
    judge_model: str | Path | None = None,
    speed: bool = False,
    out_dir: str | Path = "results",
    device: str = "cpu",
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    model_id: str | None = None,
    progress: bool = True,
    decode: str = "generate",
) -> list[dict[str, Any]]:
    """Accuracy of every (config, task, length) cell, stored in `out_dir`; finished cells are not re-run.

    `model_path`: Hugging Face folder, .gguf file, 'tiny:<family>:<layers>:<vocab>', or None (embedded SmolLM2).
    `model`/`tokenizer`/`model_id` inject a loaded model instead (tests). Arguments, data and prompt lengths are
    all checked before any model is loaded. Returns one record per cell, in grid order. `decode`: "generate"
    (transformers) or "static" (StaticDecoder, CUDA graphs on GPU; generate's greedy answers in float32).
    """
    configs = configs if configs is not None else load_grid(DEFAULT_GRID)[0]
    _check_settings(configs, tasks, lengths, n, max_new_tokens, batch_size, scorer, data_file, judge_model)
    if decode not in DECODE_MODES:
        raise ValueError(f"decode={decode!r}: expected one of {DECODE_MODES}")
    injected = (model is not None, tokenizer is not None, model_id is not None)
    if any(injected) and (not all(injected) or model_path is not None or adapter is not None):
        raise ValueError("inject model, tokenizer and model_id together, without model_path or adapter")
    file_samples = load_eval_file(data_file, limit=n) if data_file is not None else None
    if model is None:
        model_name, model_id, context = _model_identity(model_path)
    else:
        model_name, context = model_id, model.config.max_position_embeddings
    if lengths:
        _check_context({f"length {x}": x for x in lengths}, context, max_new_tokens)
    if tokenizer is None:
        tokenizer = load_tokenizer(model_path)
    cells = _make_cells(tasks, lengths, n, seed, file_samples, tokenizer)
    prompt_tokens = {c.label: max(len(chat_token_ids(tokenizer, s.prompt)) for s in c.samples) for c in cells}
    _check_context(prompt_tokens, context, max_new_tokens)
    _warn_short_answers(cells, tokenizer, max_new_tokens)

    store = ResultStore(out_dir)
    if judge_model is not None:
        scorer = f"{JUDGE}:{judge_model}:{path_identity(judge_model)}"
    common = {"model": model_name, "model_id": model_id, "adapter": None if adapter is None else str(adapter),
              "adapter_id": path_identity(adapter), "seed": seed, "max_new_tokens": max_new_tokens,
              "prompt_template": text_identity(tokenizer.chat_template), "data_id": path_identity(data_file)}

    def key(config: SWAAConfig, cell: _Cell) -> dict[str, Any]:
        cell_scorer = scorer or ",".join(sorted({s.scorer for s in cell.samples}))
        return make_key(**common, swaa_tag=config.tag, swaa=config.to_dict(), task=cell.task, length=cell.length,
                        n=len(cell.samples), scorer=cell_scorer)

    def finished(config: SWAAConfig, cell: _Cell) -> bool:
        record = store.get(key(config, cell))
        return record is not None and (not speed or record["speed"] is not None)

    todo = {name: [c for c in cells if not finished(config, c)] for name, config in configs.items()}
    total = sum(map(len, todo.values()))
    log.info("%d of %d cells to run (the others are in %s)", total, len(configs) * len(cells), store.path)
    if total:
        model = model if model is not None else _load_model(model_path, adapter, device)
        judge = (JudgeScorer(load_model(judge_model, device=device), load_tokenizer(judge_model))
                 if judge_model else None)
        base = base_model(model)
        with tqdm(total=total, desc="cells", disable=not progress) as bar:
            for config_name, config in configs.items():
                if not todo[config_name]:
                    continue
                apply_swaa(base, config)
                try:
                    speeds: dict[int, dict[str, float]] = {}
                    for cell in todo[config_name]:
                        bar.set_description(f"{config_name} {cell.label}")
                        scores, samples, n_unparsed, elapsed = _evaluate_cell(model, tokenizer, cell, scorer, judge,
                                                                              max_new_tokens, batch_size, decode)
                        speed_length = cell.length or prompt_tokens[cell.label]
                        if speed and speed_length not in speeds:
                            speeds[speed_length] = measure_speed(model, tokenizer, speed_length, decode=decode)
                        record = store.add(key(config, cell), scores, samples, elapsed, n_unparsed=n_unparsed,
                                           speed=speeds.get(speed_length), config_name=config_name)
                        log.info("%s %s: %.1f%% ± %.1f (n=%d, %.1f s)", config_name, cell.label,
                                 100 * record["accuracy"], 100 * record["stderr"], record["n"], elapsed)
                        bar.update()
                finally:
                    remove_swaa(base)
    return [{**store.get(key(config, cell)), "config_name": name} for name, config in configs.items() for cell in cells]
