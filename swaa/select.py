"""Measured choice of the full layers: answer-token NLL of calibration samples under SWAA configurations, ranked by
one-layer sensitivity or grown greedily from all-SWA; writes a presets YAML with explicit full_layers, scores, a plot.

python -m swaa.select --model tiny:llama:8:49152 --window 64 --sink 4 --budget 2 --out sel.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import io
import json
import logging
import math
import re
import signal
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import yaml
from matplotlib.figure import Figure
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from swaa.attention import BACKENDS
from swaa.checkpoints import load_adapter
from swaa.cli import exit_input_error, given_values, int_at_least, int_values
from swaa.config import SWAAConfig
from swaa.data.chat import IGNORE_INDEX, PadCollator, encode_chat
from swaa.data.synthetic import SyntheticDataModule, split_evenly
from swaa.eval.datasets import load_eval_file
from swaa.eval.grid import check_sample_flags
from swaa.eval.results import path_identity
from swaa.files import check_output_path, write_atomic
from swaa.integration import answer_start, apply_swaa, check_backends, remove_swaa
from swaa.loss import answer_logits, sample_nll, supervised_columns
from swaa.models import base_model, check_device, load_config, load_model, load_tokenizer
from swaa.tasks.generators import Sample, make_samples, train_answer

log = logging.getLogger(__name__)
CRITERIA = ("greedy", "sensitivity")
TRAINING_TASKS = tuple(inspect.signature(SyntheticDataModule).parameters["tasks"].default)
CONTEXT_ROOM = 256  # tokens the default calibration length leaves for the chat template and the answer
PROG = "python -m swaa.select"  # the command's name in its usage and error lines


def resolve_budget(budget: int | float | Fraction | str, depth: int, where: str = "budget") -> int:
    """Number of full layers: a count in 1..depth-1, or a fraction in (0, 1) of `depth` rounded down (so 1/4 of 30
    layers is 7, as many as `every:4:from:3`). Strings: '2' is a count, '0.25' and '1/4' are fractions. Errors name
    `where`."""
    if depth < 2:
        raise ValueError(f"the model has {depth} layer{'s' * (depth != 1)}: choosing full layers needs a model "
                         "with >= 2 layers")
    allowed = f"a count in 1..{depth - 1} or a fraction in (0, 1) of the {depth} layers"
    value: int | Fraction
    try:
        if isinstance(budget, bool):
            raise TypeError
        if isinstance(budget, str):
            value = int(budget) if budget.strip().lstrip("-").isdigit() else Fraction(budget.strip())
        else:
            value = budget if isinstance(budget, int) else Fraction(str(budget))  # str: 0.3 is 3/10, not below
    except (TypeError, ValueError, ZeroDivisionError):
        raise ValueError(f"{where}={budget!r}: expected {allowed}") from None
    if isinstance(value, int):
        count = value
    elif 0 < value < 1:
        count = math.floor(value * depth)
    else:
        raise ValueError(f"{where}={budget!r}: expected {allowed}")
    if not 1 <= count <= depth - 1:
        what = "no full layer" if count < 1 else "every layer full (plain full attention)" if count == depth else \
            f"{count} full layers"
        raise ValueError(f"{where}={budget!r} means {what}; expected {allowed}")
    return count


def distinct_budgets(budgets: list[str], depth: int, where: str = "budget") -> list[int]:
    """Layer counts of several budgets, largest first (greedy's larger runs contain the smaller ones' steps); two
    budgets of the same count are an error. Errors name `where`."""
    counts = [resolve_budget(b, depth, where) for b in budgets]
    for i, count in enumerate(counts):
        if count in counts[:i]:
            raise ValueError(f"{where}={budgets[i]!r} and {where}={budgets[counts.index(count)]!r} both mean {count} "
                             f"of the {depth} layers; give each count once")
    return sorted(counts, reverse=True)


def periodic_layers(depth: int, count: int) -> list[int]:
    """The periodic choice of the same size: `every:K:from:K-1` with K = depth // count, its first `count` layers."""
    step = depth // count
    return list(range(step - 1, depth, step))[:count]


# -- calibration data -------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CalibrationBatch:
    """Left-padded samples (B, T) with labels -100 on prompt and padding."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def prompt_len(self) -> torch.Tensor:
        """Each sample's prompt length P in real tokens, as SWAA derives it from labels in training."""
        return answer_start(self.labels, self.attention_mask)

    def to(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device),
                "labels": self.labels.to(device)}


def default_length(window: int, context: int) -> int:
    """Calibration prompts well beyond the window (8 W, at least 512 tokens), within the model's context."""
    return min(max(8 * window, 512), context - CONTEXT_ROOM)


def calibration_samples(tokenizer: PreTrainedTokenizerBase, tasks: list[str] | None = None,
                        lengths: list[int] | None = None, n: int = 8, seed: int = 0,
                        data: str | Path | None = None) -> list[Sample]:
    """The first n samples of a prompt/answer file (`data`), or n samples of the training tasks' 'train' split spread
    evenly over (task, length) pairs as SyntheticDataModule spreads its training samples."""
    if n < 1:
        raise ValueError(f"n={n}: expected >= 1 calibration samples")
    if data is not None:
        if tasks or lengths:
            raise ValueError("a calibration file brings its own samples: do not also give tasks or lengths")
        return load_eval_file(data, limit=n)
    if not lengths:
        raise ValueError("lengths: give the calibration prompt lengths in tokens (see default_length)")
    pairs = [(task, length) for task in tasks or TRAINING_TASKS for length in lengths]
    return [sample for (task, length), k in zip(pairs, split_evenly(n, len(pairs))) if k
            for sample in make_samples(task, k, length, tokenizer, seed=seed, split="train")]


def encode_samples(tokenizer: PreTrainedTokenizerBase, samples: list[Sample], context: int) -> list[dict]:
    """Token ids and labels of each sample as a training chat (user prompt, assistant answer); a sample longer than
    `context` is an error."""
    encoded = []
    for sample in samples:
        enc = encode_chat(tokenizer, [{"role": "user", "content": sample.prompt},
                                      {"role": "assistant", "content": train_answer(sample)}])
        length = len(enc["input_ids"])
        if length > context:
            raise ValueError(f"calibration sample {sample.id} is {length} tokens (chat template and answer included), "
                             f"longer than the model's context of {context} tokens (max_position_embeddings); "
                             f"use calibration lengths <= {context - CONTEXT_ROOM}")
        if all(label == IGNORE_INDEX for label in enc["labels"]):
            raise ValueError(f"calibration sample {sample.id} has no answer token to score")
        encoded.append(enc)
    return encoded


def make_batches(encoded: list[dict], batch_size: int, pad_token_id: int) -> list[CalibrationBatch]:
    """Batches of `batch_size` samples ({input_ids, labels} lists), grouped by length, left-padded."""
    if not encoded or batch_size < 1:
        raise ValueError(f"make_batches: need >= 1 sample and batch_size >= 1, got {len(encoded)} and {batch_size}")
    collate = PadCollator(pad_token_id, padding_side="left")
    ordered = sorted(encoded, key=lambda e: len(e["input_ids"]))
    batches = []
    for start in range(0, len(ordered), batch_size):
        batch = collate(ordered[start:start + batch_size])
        supervised = batch["labels"] != IGNORE_INDEX
        if not supervised.any(1).all():
            raise ValueError("make_batches: every sample needs at least one supervised (label != -100) token")
        batches.append(CalibrationBatch(batch["input_ids"], batch["attention_mask"], batch["labels"]))
    return batches


def calibration_batches(tokenizer: PreTrainedTokenizerBase, context: int, window: int,
                        tasks: list[str] | None = None, lengths: list[int] | None = None, n: int = 8, seed: int = 0,
                        data: str | Path | None = None, batch_size: int = 4) -> list[CalibrationBatch]:
    """Encoded calibration batches for a model with `context` positions; lengths None = default_length."""
    if data is None and not lengths:
        lengths = [default_length(window, context)]
    samples = calibration_samples(tokenizer, tasks, lengths, n, seed, data)
    return make_batches(encode_samples(tokenizer, samples, context), batch_size, tokenizer.pad_token_id)


# -- scoring and selection --------------------------------------------------------------------------------------------

def answer_nll(model: PreTrainedModel | PeftModel, config: SWAAConfig, batches: list[CalibrationBatch],
               backend: str = "auto") -> torch.Tensor:
    """Mean answer-token NLL of each calibration sample (float32, CPU) with `config` applied to the model (in place):
    prompt rows under SWA, answer rows as the config says for them, P set per sample as training derives it."""
    base = base_model(model)
    apply_swaa(base, config, backend)
    nlls = []
    with torch.inference_mode():
        for batch in batches:
            batch = batch.to(base.device)
            columns = supervised_columns(batch["labels"])
            nlls.append(sample_nll(answer_logits(base, batch, columns), batch["labels"], columns).cpu())
    return torch.cat(nlls)


@dataclasses.dataclass
class Selection:
    """What a selection measured (NLL = mean over calibration samples of their mean answer-token NLL) and chose."""

    swaa: SWAAConfig
    """window, sink and fa_decode of every candidate (its full_layers is empty)."""
    budget: int
    nll_fa: float
    """Every layer full: the model's own full attention."""
    nll_swa: float
    """Every layer SWA."""
    nll_single: list[float]
    """By layer: NLL when only that layer is full (the one-layer sensitivity; also the first greedy step)."""
    greedy: list[dict[int, float]]
    """By greedy step: NLL of each candidate layer added to the layers chosen before."""
    chosen: dict[str, list[int]]
    """By criterion: the full layers, sorted."""
    nll_chosen: dict[str, float]
    """By criterion, and 'periodic' for periodic_layers of the same size: NLL with those layers full."""
    forwards: int
    """Passes over the calibration data this selection made (sets measured by an earlier one are not counted)."""
    seconds: float

    @property
    def depth(self) -> int:
        return len(self.nll_single)

    @property
    def greedy_order(self) -> list[int]:
        return [min(step, key=lambda layer: (step[layer], layer)) for step in self.greedy]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record with one row per layer."""
        order = self.greedy_order
        layers = [{"layer": layer, "nll_single": nll, "gain_single": self.nll_swa - nll,
                   "greedy_step": order.index(layer) + 1 if layer in order else None,
                   **{f"in_{criterion}": layer in chosen for criterion, chosen in self.chosen.items()}}
                  for layer, nll in enumerate(self.nll_single)]
        steps = [{"step": i + 1, "layer": layer, "nll": step[layer], "candidates": {str(k): v for k, v in step.items()}}
                 for i, (layer, step) in enumerate(zip(order, self.greedy))]
        return {"swaa": self.swaa.to_dict(), "depth": self.depth, "budget": self.budget, "nll_fa": self.nll_fa,
                "nll_swa": self.nll_swa, "chosen": self.chosen, "nll_chosen": self.nll_chosen,
                "periodic": periodic_layers(self.depth, self.budget), "forwards": self.forwards,
                "seconds": self.seconds, "seconds_per_forward": self.seconds / self.forwards if self.forwards else None,
                "layers": layers, "greedy": steps}


def select_full_layers(model: PreTrainedModel | PeftModel, batches: list[CalibrationBatch], window: int,
                       sink: int = 0, fa_decode: bool | list[int] = True, budget: int | float | str = "1/4",
                       criteria: tuple[str, ...] = CRITERIA, backend: str = "auto",
                       progress: bool = True, measured: dict | None = None) -> Selection:
    """Choose `budget` full layers by answer NLL on `batches`: 'sensitivity' keeps the layers whose being the only
    full layer lowers the NLL most; 'greedy' starts all-SWA and adds the layer that lowers the NLL most, until the
    budget. One candidate costs one pass over the batches; the model is left without SWAA. `measured` (NLL by set of
    full layers, None for FA) is read and filled: calls with the same model, batches and settings share passes."""
    base = base_model(model)
    depth = base.config.num_hidden_layers
    count = resolve_budget(budget, depth)
    unknown = [c for c in criteria if c not in CRITERIA]
    if not criteria or unknown:
        raise ValueError(f"criteria={list(criteria)!r}: expected one or more of {list(CRITERIA)}")
    plain = SWAAConfig(window=window, sink=sink, fa_decode=fa_decode)
    if not plain.enabled:
        raise ValueError("window=None: choosing full layers needs a sliding window (an int >= 1)")
    if max(int(b.prompt_len.max()) for b in batches) <= window:
        log.warning("every calibration prompt fits in the window (%d tokens): SWA equals full attention on them and "
                    "every candidate scores the same; use longer prompts", window)
    greedy_forwards = sum(depth - step for step in range(1, count)) if "greedy" in criteria else 0
    bar = tqdm(total=3 + depth + greedy_forwards + ("sensitivity" in criteria), desc="candidates",
               disable=not progress)
    measured = {} if measured is None else measured
    known = len(measured)

    def score(config: SWAAConfig) -> float:
        value = answer_nll(base, config, batches, backend).mean().item()
        bar.update()
        return value

    def nll(layers: list[int] | None) -> float:
        """NLL with these layers full and the others SWA (None: full attention), measured once per set."""
        key = None if layers is None else tuple(sorted(layers))
        if key not in measured:
            measured[key] = score(SWAAConfig() if key is None else dataclasses.replace(plain, full_layers=list(key)))
        return measured[key]

    start = time.perf_counter()
    try:
        nll_fa, nll_swa = nll(None), nll([])
        single = [nll([layer]) for layer in range(depth)]
        greedy: list[dict[int, float]] = []
        chosen: dict[str, list[int]] = {}
        if "greedy" in criteria:
            picked: list[int] = []
            for _ in range(count):
                step = {layer: nll(picked + [layer]) for layer in range(depth) if layer not in picked}
                greedy.append(step)
                picked.append(min(step, key=lambda layer: (step[layer], layer)))
                log.info("greedy step %d: layer %d, NLL %.4f (all SWA %.4f, FA %.4f)", len(picked), picked[-1],
                         step[picked[-1]], nll_swa, nll_fa)
            chosen["greedy"] = sorted(picked)
        if "sensitivity" in criteria:
            chosen["sensitivity"] = sorted(sorted(range(depth), key=lambda layer: (single[layer], layer))[:count])
        nll_chosen = {criterion: nll(layers) for criterion, layers in chosen.items()}
        nll_chosen["periodic"] = nll(periodic_layers(depth, count))
    finally:
        remove_swaa(base)
        bar.total = bar.n
        bar.close()
    seconds, forwards = time.perf_counter() - start, len(measured) - known
    log.info("chose %d of %d layers in %.1f s: %d new passes over %d calibration batches", count, depth, seconds,
             forwards, len(batches))
    return Selection(plain, count, nll_fa, nll_swa, single, greedy, chosen, nll_chosen, forwards, seconds)


# -- resuming ---------------------------------------------------------------------------------------------------------

class SavedPasses(dict):
    """NLL by set of full layers (None: full attention), written atomically to `path` after every new pass with the
    `fingerprint` of what it was measured on; a file with the same fingerprint is read back, so an interrupted
    selection resumes where it stopped and a rerun with other budgets reuses every pass (other settings: replaced)."""

    def __init__(self, path: str | Path, fingerprint: str) -> None:
        super().__init__()
        self.path, self.fingerprint = Path(path), fingerprint
        if not self.path.is_file():
            return
        try:
            saved = json.loads(self.path.read_text())
            passes = {None if layers is None else tuple(layers): float(nll) for layers, nll in saved["passes"]}
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self.path}: not a swaa.select passes file ({e!r}); remove it to measure anew") from e
        if saved.get("fingerprint") != fingerprint:
            log.warning("%s holds passes of another model, adapter, settings or calibration data: measuring anew",
                        self.path)
            return
        super().update(passes)
        log.info("resuming: %d passes read from %s", len(passes), self.path)

    def __setitem__(self, key: tuple[int, ...] | None, nll: float) -> None:
        super().__setitem__(key, nll)
        passes = [[None if k is None else list(k), v] for k, v in self.items()]
        write_atomic(self.path, json.dumps({"fingerprint": self.fingerprint, "passes": passes}) + "\n")


def passes_fingerprint(settings: dict[str, Any], batches: list[CalibrationBatch]) -> str:
    """sha256 of the settings (JSON), the path_identity of the local model and adapter they name (`model` /
    `adapter` keys) and the calibration tokens."""
    files = {key: path_identity(settings[key]) for key in ("model", "adapter")
             if settings.get(key) and Path(settings[key]).exists()}
    digest = hashlib.sha256(json.dumps({**settings, "files": files}, sort_keys=True, default=str).encode())
    for batch in batches:
        for tensor in (batch.input_ids, batch.attention_mask, batch.labels):
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


# -- outputs ----------------------------------------------------------------------------------------------------------

def preset_entries(selection: Selection, name: str | None = None, several: bool = False) -> dict[str, dict[str, Any]]:
    """One preset per criterion with its explicit full_layers; `name` names a single criterion's entry, or prefixes
    '_<criterion>' when there are several (and '_<k>of<depth>' with `several` budgets). Default names say the
    settings, e.g. 'greedy_w64_s4_fad_2of8'."""
    swaa = selection.swaa
    fad = "_fad" if swaa.fa_decode is True else "_fad" + "-".join(map(str, swaa.fa_decode)) if swaa.fa_decode else ""
    size = f"{selection.budget}of{selection.depth}"
    entries = {}
    for criterion, layers in selection.chosen.items():
        if name is None:
            key = f"{criterion}_w{swaa.window}_s{swaa.sink}{fad}_{size}"
        else:
            key = (name if len(selection.chosen) == 1 else f"{name}_{criterion}") + (f"_{size}" if several else "")
        entries[key] = dataclasses.replace(swaa, full_layers=layers).to_dict()
    return entries


def plot_selection(selection: Selection) -> Figure:
    """Left: NLL gain of each layer alone full (one-layer sensitivity), chosen layers marked; right: each choice's NLL
above full attention's."""
    depth, order = selection.depth, selection.greedy_order
    fig = Figure(figsize=(max(7.0, 3.5 + 0.3 * depth), 3.8), layout="constrained")
    ax, ax_sets = fig.subplots(1, 2, width_ratios=[3, 1])
    gains = [selection.nll_swa - nll for nll in selection.nll_single]
    in_sensitivity = set(selection.chosen.get("sensitivity", []))
    colors = ["tab:orange" if layer in in_sensitivity else "tab:blue" for layer in range(depth)]
    ax.bar(range(depth), gains, color=colors)
    for step, layer in enumerate(order, 1):
        ax.annotate(f"g{step}", (layer, max(gains[layer], 0)), ha="center", va="bottom", fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("layer (orange: sensitivity choice; gN: greedy step N)")
    ax.set_ylabel("NLL(all SWA) - NLL(only this layer full)")
    ax.set_title(f"{selection.swaa.tag}, {selection.budget} of {depth} layers full", fontsize=10)
    names = ["all SWA", *selection.nll_chosen]
    gaps = [nll - selection.nll_fa for nll in (selection.nll_swa, *selection.nll_chosen.values())]
    ax_sets.barh(names, gaps, color="tab:gray")
    ax_sets.axvline(0, color="black", linewidth=0.5)
    ax_sets.invert_yaxis()
    ax_sets.set_xlabel("NLL - NLL(FA)")
    return fig


def output_pattern(out: Path) -> re.Pattern[str]:
    """Names of the scores and plots that write_selections writes beside `out`: <stem>[.<k>of<depth>].scores.json
    and .png (not the presets `out`, nor the passes file that later runs reuse)."""
    return re.compile(rf"{re.escape(out.with_suffix('').name)}(\.[1-9]\d*of[1-9]\d*)?\.(scores\.json|png)")


def remove_stale_outputs(out: Path, written: list[Path]) -> list[Path]:
    """Remove the scores and plots of an earlier run into `out` (output_pattern) that this run did not write (e.g.
    per-budget files after a single-budget run); returns them, each logged."""
    pattern, keep = output_pattern(out), {path.name for path in written}
    stale = sorted(path for path in out.parent.iterdir()
                   if pattern.fullmatch(path.name) and path.name not in keep and path.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
        log.info("removed %s: an earlier run's output into %s that this run does not write", path, out.name)
    return stale


def write_selections(selections: list[Selection], out: str | Path, name: str | None = None,
                     meta: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write (atomically) the presets YAML `out` with every selection's entries, and each selection's scores JSON and
    plot PNG beside it (`out` with .scores.json / .png; with several budgets .<k>of<depth>.scores.json / .png); then
    remove the scores and plots an earlier run with other budgets left there (remove_stale_outputs)."""
    out, several = Path(out), len(selections) > 1
    paths, entries = {"presets": out}, {}
    for selection in selections:
        stem = out.with_suffix(f".{selection.budget}of{selection.depth}" if several else "")
        scores, plot = stem.with_name(stem.name + ".scores.json"), stem.with_name(stem.name + ".png")
        write_atomic(scores, json.dumps({**(meta or {}), **selection.to_dict()}, indent=1) + "\n")
        buf = io.BytesIO()
        plot_selection(selection).savefig(buf, format="png", dpi=120)
        write_atomic(plot, buf.getvalue())
        suffix = f" {selection.budget}of{selection.depth}" if several else ""
        paths.update({f"scores{suffix}": scores, f"plot{suffix}": plot})
        entries.update(preset_entries(selection, name, several))
    header = (f"# SWAA presets chosen by swaa.select (answer NLL on calibration data); scores and plots beside this "
              f"file: {', '.join(p.name for k, p in paths.items() if k != 'presets')}\n")
    write_atomic(out, header + yaml.safe_dump(entries, sort_keys=False, default_flow_style=None))
    remove_stale_outputs(out, list(paths.values()))
    return paths


# -- command line -----------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="Hugging Face folder, .gguf file or tiny:<family>:<layers>:<vocab> "
                                   "(default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--adapter", help="LoRA adapter: a peft folder or a train.py .ckpt (default: none)")
    p.add_argument("--window", type=int_at_least(1), required=True, help="W of the SWA layers")
    p.add_argument("--sink", type=int_at_least(0), default=0,
                   help="S, sink tokens of the SWA layers (default: %(default)s)")
    p.add_argument("--fa-decode", action=argparse.BooleanOptionalAction, default=True,
                   help="answer rows use full attention in SWA layers (default: on)")
    p.add_argument("--budget", required=True, nargs="+",
                   help="full layers to choose: a count ('2') or a fraction ('1/4', '0.25', rounded down); several "
                        "(space or comma separated) share their passes: greedy runs once, to the largest")
    p.add_argument("--criterion", choices=[*CRITERIA, "both"], default="both",
                   help="greedy, one-layer sensitivity, or both (the sensitivity ranking is greedy's first step: "
                        "both cost one pass more than greedy) (default: %(default)s)")
    p.add_argument("--tasks", nargs="+", help="synthetic training tasks, space or comma separated (default: "
                                              f"{', '.join(TRAINING_TASKS)})")
    p.add_argument("--lengths", nargs="+", help="calibration prompt lengths in tokens, space or comma separated "
                                                "(default: 8 W, at least 512, within the model's context)")
    p.add_argument("--data", help="calibration file (.jsonl/.parquet/.json with prompt and answer) instead of the "
                                  "synthetic tasks")
    p.add_argument("--n", type=int_at_least(1), default=8, help="calibration samples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic samples (default: %(default)s)")
    p.add_argument("--batch-size", type=int_at_least(1), default=4,
                   help="samples per forward (default: %(default)s)")
    p.add_argument("--backend", default="auto", choices=sorted(BACKENDS),
                   help="SWAA attention backend (default: %(default)s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--name", help="preset name (with several criteria: NAME_<criterion>) (default: from the settings)")
    p.add_argument("--out", required=True,
                   help="presets YAML to write; the scores (.scores.json), the plot (.png) and every measured pass "
                        "(.passes.json: the same command resumes from it) go beside it")
    args = p.parse_args(argv)
    args.tasks, args.budget = given_values(p, "--tasks", args.tasks), given_values(p, "--budget", args.budget)
    args.lengths = int_values(p, "--lengths", args.lengths, 1)
    check_sample_flags(p, args.data, args.tasks, args.lengths, "calibration file")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("swaa.integration").setLevel(logging.WARNING)  # not one line per candidate
    criteria = CRITERIA if args.criterion == "both" else (args.criterion,)
    measured: SavedPasses | None = None
    try:
        check_output_path(args.out, "--out")
        config = load_config(args.model, "--model")
        budgets = distinct_budgets(args.budget, config.num_hidden_layers, "--budget")  # before data and weights
        check_backends([args.backend], check_device(args.device, "--device"), "--backend")  # before the passes file
        if args.data is None and args.lengths is None:
            args.lengths = [default_length(args.window, config.max_position_embeddings)]
        tokenizer = load_tokenizer(args.model, "--model")
        batches = calibration_batches(tokenizer, config.max_position_embeddings, args.window, args.tasks, args.lengths,
                                      args.n, args.seed, args.data, args.batch_size)
        meta = {"model": args.model, "adapter": args.adapter, "calibration": {
            "data": args.data, "tasks": args.tasks or (None if args.data else list(TRAINING_TASKS)),
            "lengths": args.lengths, "n": args.n, "seed": args.seed, "batch_size": args.batch_size},
            "backend": args.backend, "device": args.device}
        settings = {**meta, "window": args.window, "sink": args.sink, "fa_decode": args.fa_decode}
        measured = SavedPasses(Path(args.out).with_suffix(".passes.json"), passes_fingerprint(settings, batches))
        model = load_model(args.model, device=args.device)
        model = load_adapter(model, args.adapter) if args.adapter else model
        selections = [select_full_layers(model, batches, args.window, args.sink, args.fa_decode, budget, criteria,
                                         args.backend, measured=measured) for budget in budgets]
        paths = write_selections(selections, args.out, args.name, meta)
    except (ValueError, FileNotFoundError) as e:
        exit_input_error(PROG, e)
    except KeyboardInterrupt:
        if measured is not None:
            log.error("interrupted: %d passes are saved in %s; the same command resumes from them", len(measured),
                      measured.path)
        sys.exit(128 + signal.SIGINT)
    for selection in selections:
        for entry, swaa in preset_entries(selection, args.name, len(selections) > 1).items():
            print(f"{entry}: full_layers {swaa['full_layers']}  (train.py --model.swaa '{json.dumps(swaa)}')")
        nlls = {"fa": selection.nll_fa, "all_swa": selection.nll_swa, **selection.nll_chosen}
        print(f"{selection.budget} of {selection.depth}, answer NLL: "
              + ", ".join(f"{key} {value:.4f}" for key, value in nlls.items()))
    print(f"{sum(s.forwards for s in selections)} passes over {len(batches)} batches in "
          f"{sum(s.seconds for s in selections):.1f} s")
    for kind, path in paths.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
