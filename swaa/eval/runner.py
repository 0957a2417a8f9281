"""Evaluate one model over a grid of SWAA configurations x tasks x lengths, in stages: plan the cells (every check
before any model loads), load the model, run each unfinished cell, store its record; finished cells are not re-run."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from swaa import SWAAConfig, apply_swaa, remove_swaa
from swaa.config import check_depth
from swaa.checkpoints import load_adapter
from swaa.eval.datasets import load_eval_file
from swaa.eval.grid import JUDGE, GridSettings
from swaa.eval.results import ResultStore, make_key, path_identity, text_identity
from swaa.eval.speed import measure_speed, speed_setup
from swaa.generation import chat_token_ids, generate_answers
from swaa.models import base_model, default_dtype, default_model_path, load_config, load_model, load_tokenizer
from swaa.tasks.generators import Sample, make_samples, train_answer
from swaa.tasks.scorers import JudgeScorer, score
from swaa.tiny import is_tiny_spec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model already in memory (tests, notebooks), its tokenizer, and the id its records are keyed by."""

    model: PreTrainedModel | PeftModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str


@dataclasses.dataclass
class Cell:
    """The samples of one task at one prompt length (length None: a task of a data file)."""

    task: str
    length: int | None
    samples: list[Sample]

    @property
    def label(self) -> str:
        return self.task if self.length is None else f"{self.task}@{self.length}"


@dataclasses.dataclass
class CellResult:
    """One cell's scores, per-sample outputs, unparsed judge verdicts (counted as wrong) and wall time."""

    scores: list[float]
    samples: list[dict[str, Any]]
    n_unparsed: int
    seconds: float


@dataclasses.dataclass
class Plan:
    """The cells of a grid, the store of their records, and the key fields every record shares."""

    configs: dict[str, SWAAConfig]
    cells: list[Cell]
    prompt_tokens: dict[str, int]  # the longest chat prompt of each cell, in tokens, by cell label
    tokenizer: PreTrainedTokenizerBase
    store: ResultStore
    common_key: dict[str, Any]
    scorer: str | None  # overrides each sample's scorer; 'judge:<model>:<identity>' with a judge model
    speed_setup: dict[str, str]  # what a stored timing must have been measured under to be reused (speed_setup)

    def key(self, config: SWAAConfig, cell: Cell) -> dict[str, Any]:
        scorer = self.scorer or ",".join(sorted({s.scorer for s in cell.samples}))
        return make_key(**self.common_key, swaa_tag=config.tag, swaa=config.to_dict(), task=cell.task,
                        length=cell.length, n=len(cell.samples), scorer=scorer)

    def unfinished(self, speed: bool) -> dict[str, list[Cell]]:
        """Per config name, the cells without a stored record (or, with `speed`, without one timed under this
        `speed_setup`: an older timing without some of its fields is timed again)."""
        def finished(config: SWAAConfig, cell: Cell) -> bool:
            record = self.store.get(self.key(config, cell))
            return record is not None and (not speed or record["speed"] is not None and all(
                record["speed"].get(name) == value for name, value in self.speed_setup.items()))
        return {name: [c for c in self.cells if not finished(config, c)] for name, config in self.configs.items()}

    def records(self) -> list[dict[str, Any]]:
        """The stored record of every (config, cell), in grid order, with its config name."""
        return [{**self.store.get(self.key(config, cell)), "config_name": name}
                for name, config in self.configs.items() for cell in self.cells]


def _check_context(lengths: dict[str, int], context: int, max_new_tokens: int) -> None:
    """Every prompt length (by cell name) plus the new tokens must fit the model's max_position_embeddings."""
    too_long = {cell: length for cell, length in lengths.items() if length + max_new_tokens > context}
    if too_long:
        raise ValueError(f"prompt lengths {too_long} + {max_new_tokens} new tokens exceed the model context of "
                         f"{context} tokens (max_position_embeddings); use lengths <= {context - max_new_tokens}")


def _warn_short_answers(cells: list[Cell], tokenizer: PreTrainedTokenizerBase, max_new_tokens: int) -> None:
    """Warn about cells whose reference answer (values joined by commas, plus the end token) needs more new tokens
    than allowed: their multi-value answers would be cut and scored as partly wrong."""
    need = {c.label: max(len(tokenizer(train_answer(s), add_special_tokens=False).input_ids) + 1 for s in c.samples)
            for c in cells}
    short = {label: n for label, n in need.items() if n > max_new_tokens}
    if short:
        log.warning("max_new_tokens=%d is below the reference answer length (tokens) of %s: those answers get cut; "
                    "raise max_new_tokens to %d", max_new_tokens, short, max(short.values()))


def _model_identity(model_path: str | Path | None, where: str) -> tuple[str, str, PretrainedConfig]:
    """(name, identity hash, config) of a model path or tiny spec, without loading its weights."""
    if is_tiny_spec(model_path):
        return str(model_path), str(model_path), load_config(model_path, where)
    path = Path(model_path) if model_path is not None else default_model_path()
    config = load_config(path, where)  # its error names `where`, before hashing a path that may not exist
    return str(path), path_identity(path), config


def _make_cells(settings: GridSettings, file_samples: list[Sample] | None,
                tokenizer: PreTrainedTokenizerBase) -> list[Cell]:
    """Synthetic cells per (task, length), or one cell per task of a data file (length None)."""
    if file_samples is None:
        return [Cell(t, x, make_samples(t, settings.n, x, tokenizer, seed=settings.seed))
                for t in settings.tasks for x in settings.lengths]
    by_task: dict[str, list[Sample]] = {}
    for s in file_samples:
        by_task.setdefault(s.task, []).append(s)
    return [Cell(t, None, samples) for t, samples in by_task.items()]


def plan_grid(configs: dict[str, SWAAConfig], settings: GridSettings, model_path: str | Path | None = None,
              adapter: str | Path | None = None, loaded: LoadedModel | None = None, where: str = "model",
              judge_where: str = "judge_model") -> Plan:
    """Check the configs against the model's depth, the data and every prompt length against its context, and make
    the cells; loads the tokenizer, not the model. Errors about `model_path` name `where`, about the judge model
    `judge_where`."""
    if not configs or not all(isinstance(c, SWAAConfig) for c in configs.values()):
        raise ValueError(f"configs: expected a non-empty mapping name -> SWAAConfig, got {configs!r}")
    if loaded is not None and (model_path is not None or adapter is not None):
        raise ValueError("give a loaded model or a model path (with an adapter), not both")
    file_samples = load_eval_file(settings.data_file, limit=settings.n) if settings.data_file is not None else None
    if loaded is None:
        model_name, model_id, model_config = _model_identity(model_path, where)
    else:
        model_name, model_id, model_config = loaded.model_id, loaded.model_id, loaded.model.config
    judge_scorer = None if settings.judge_model is None else ":".join(
        (JUDGE, *_model_identity(settings.judge_model, judge_where)[:2]))  # judge:<name>:<identity>
    context = model_config.max_position_embeddings
    check_depth(configs, model_config.num_hidden_layers)
    if settings.lengths:
        _check_context({f"length {x}": x for x in settings.lengths}, context, settings.max_new_tokens)
    tokenizer = load_tokenizer(model_path, where) if loaded is None else loaded.tokenizer
    cells = _make_cells(settings, file_samples, tokenizer)
    prompt_tokens = {c.label: max(len(chat_token_ids(tokenizer, s.prompt)) for s in c.samples) for c in cells}
    _check_context(prompt_tokens, context, settings.max_new_tokens)
    _warn_short_answers(cells, tokenizer, settings.max_new_tokens)
    common_key = {"model": model_name, "model_id": model_id, "adapter": None if adapter is None else str(adapter),
                  "adapter_id": path_identity(adapter), "seed": settings.seed,
                  "max_new_tokens": settings.max_new_tokens, "prompt_template": text_identity(tokenizer.chat_template),
                  "data_id": path_identity(settings.data_file), "backend": settings.backend}
    model_setup = (settings.device, default_dtype(settings.device)) if loaded is None else \
        (loaded.model.device, loaded.model.dtype)
    return Plan(configs, cells, prompt_tokens, tokenizer, ResultStore(settings.out_dir), common_key,
                judge_scorer or settings.scorer, speed_setup(settings.decode, *model_setup))


def _load_model(model_path: str | Path | None, adapter: str | Path | None, device: str) -> PreTrainedModel | PeftModel:
    model = load_model(model_path, device=device)
    return load_adapter(model, adapter) if adapter is not None else model


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


def run_cell(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase, cell: Cell,
             settings: GridSettings, judge: JudgeScorer | None) -> CellResult:
    """Generate and score one cell with the model as configured; the judge (if any) scores, else each sample's own
    scorer or `settings.scorer`."""
    t0 = time.perf_counter()
    predictions = _generate_with_backoff(model, tokenizer, [s.prompt for s in cell.samples], settings.max_new_tokens,
                                         settings.batch_size, settings.decode)
    if judge is not None:
        verdicts = judge([s.prompt for s in cell.samples], predictions, [s.answers for s in cell.samples])
        scores = [float(bool(v)) for v in verdicts]
    else:
        scores = [score(settings.scorer or s.scorer, p, s.answers, s.choices)
                  for s, p in zip(cell.samples, predictions)]
        verdicts = scores
    samples = [{"id": s.id, "task": s.task, "length": s.length, "depth": s.depth, "answers": s.answers,
                "prediction": p, "score": v} for s, p, v in zip(cell.samples, predictions, verdicts)]
    return CellResult(scores, samples, sum(v is None for v in verdicts), time.perf_counter() - t0)


def _run_config(model: PreTrainedModel | PeftModel, plan: Plan, name: str, cells: list[Cell], settings: GridSettings,
                judge: JudgeScorer | None, bar: tqdm) -> None:
    """Run and store the given cells of one configuration; the model is left without SWAA afterwards."""
    config, base = plan.configs[name], base_model(model)
    apply_swaa(base, config, settings.backend)
    try:
        speeds: dict[int, dict[str, float]] = {}  # one timing per prompt length and config
        for cell in cells:
            bar.set_description(f"{name} {cell.label}")
            result = run_cell(model, plan.tokenizer, cell, settings, judge)
            speed_length = cell.length or plan.prompt_tokens[cell.label]
            if settings.speed and speed_length not in speeds:
                speeds[speed_length] = measure_speed(model, plan.tokenizer, speed_length, decode=settings.decode)
            record = plan.store.add(plan.key(config, cell), result.scores, result.samples, result.seconds,
                                    n_unparsed=result.n_unparsed, speed=speeds.get(speed_length), config_name=name)
            log.info("%s %s: %.1f%% ± %.1f (n=%d, %.1f s)", name, cell.label, 100 * record["accuracy"],
                     100 * record["stderr"], record["n"], result.seconds)
            bar.update()
    finally:
        remove_swaa(base)


def run_grid(configs: dict[str, SWAAConfig], settings: GridSettings, model_path: str | Path | None = None,
             adapter: str | Path | None = None, loaded: LoadedModel | None = None,
             where: str = "model", judge_where: str = "judge_model") -> list[dict[str, Any]]:
    """Accuracy of every (config, task, length) cell, stored in `settings.out_dir`; returns one record per cell, in
    grid order. Finished cells are read back, not re-run; everything is checked before a model loads.

    `model_path`: Hugging Face folder, .gguf file, 'tiny:<family>:<layers>:<vocab>' or None (embedded SmolLM2), named
    `where` in errors; `adapter`: a peft folder or train.py checkpoint; `loaded`: a model in memory instead of both;
    `judge_where` names `settings.judge_model` in errors.
    """
    plan = plan_grid(configs, settings, model_path, adapter, loaded, where, judge_where)
    todo = plan.unfinished(settings.speed)
    total = sum(map(len, todo.values()))
    log.info("%d of %d cells to run (the others are in %s)", total, len(configs) * len(plan.cells), plan.store.path)
    if total:
        model = loaded.model if loaded is not None else _load_model(model_path, adapter, settings.device)
        judge = (JudgeScorer(load_model(settings.judge_model, device=settings.device),
                             load_tokenizer(settings.judge_model)) if settings.judge_model is not None else None)
        with tqdm(total=total, desc="cells", disable=not settings.progress) as bar:
            for name, cells in todo.items():
                if cells:
                    _run_config(model, plan, name, cells, settings, judge, bar)
    return plan.records()
