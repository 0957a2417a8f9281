"""SFT DataModule over local chat files (parquet, jsonl, json, arrow, or a `save_to_disk` folder).

Records are normalised (chat.normalize_record), tokenised once per file content and tokenizer (cached), filtered by
length, and served by the resumable length-grouped loader.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import datasets
import lightning as L
import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from swaa.data.chat import IGNORE_INDEX, PadCollator, encode_chat, normalize_record
from swaa.data.sampler import LengthGroupedBatchSampler, RestartingDataLoader, ResumableDataLoader
from swaa.models import load_tokenizer
from swaa.preemption import worker_ignores_stop_signals

log = logging.getLogger(__name__)
CACHE_VERSION = "1"  # bump when the encoding changes
FILE_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow"}
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "swaa" / "data"


def load_records(path: str | Path) -> datasets.Dataset:
    """Rows of one local file (parquet, jsonl, json, arrow) or a `save_to_disk` folder (its 'train' or only split)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if not path.is_dir() and path.suffix not in FILE_FORMATS:
        raise ValueError(f"data file {path}: unsupported format {path.suffix!r}; expected one of "
                         f"{sorted(FILE_FORMATS)} or a folder written by Dataset.save_to_disk")
    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"data file {path} is empty")
    try:
        if path.is_dir():
            data = datasets.load_from_disk(str(path))
            if isinstance(data, datasets.DatasetDict):
                if "train" not in data and len(data) != 1:
                    raise ValueError(f"has splits {sorted(data)}; expected 'train' or a single split")
                data = data["train"] if "train" in data else next(iter(data.values()))
        else:
            data = datasets.load_dataset(FILE_FORMATS[path.suffix], data_files=str(path), split="train")
    except Exception as e:  # datasets raises many types for unreadable files; name the file once here
        reason = (FILE_FORMATS.get(path.suffix) == "json" and json_error(path)) or str(e) or type(e).__name__
        raise ValueError(f"cannot read data file {path}: {reason}") from e
    if len(data) == 0:
        raise ValueError(f"data file {path} has no records")
    return data


def json_error(path: Path) -> str | None:
    """Where a JSON or JSON Lines file stops parsing ('line N: ...'), or None if it parses (the problem is
    elsewhere)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        return "no records, only whitespace"
    try:
        json.loads(text)
        return None
    except json.JSONDecodeError as e:
        if e.msg != "Extra data":  # one JSON document, broken at e.lineno
            return f"line {e.lineno}: invalid JSON ({e.msg}, column {e.colno})"
    for number, line in enumerate(text.splitlines(), 1):  # JSON Lines: one record per line
        try:
            record = json.loads(line) if line.strip() else {}
        except json.JSONDecodeError as e:
            return f"line {number}: invalid JSON ({e.msg}, column {e.colno})"
        if not isinstance(record, dict):
            return f"line {number}: expected a JSON object (one record per line), got {type(record).__name__}"
    return None


def content_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, or of every file in a folder (names and bytes, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        h.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """Identity of a tokenizer for cache keys: name, vocabulary size and chat template."""
    key = f"{tokenizer.name_or_path}|{len(tokenizer)}|{tokenizer.chat_template}"
    return hashlib.sha256(key.encode()).hexdigest()


def encode_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> dict:
    """encode_chat plus the columns filtering and validation need: length, supervised count, last prompt/answer."""
    enc = encode_chat(tokenizer, messages)
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    last = assistant[-1] if assistant else len(messages)
    users = [m["content"] for m in messages[:last] if m["role"] == "user"]
    return {**enc, "length": len(enc["input_ids"]), "n_supervised": sum(t != IGNORE_INDEX for t in enc["labels"]),
            "prompt": users[-1] if users else "", "answer": messages[last]["content"] if assistant else ""}


def encode_file(path: str | Path, tokenizer: PreTrainedTokenizerBase, cache_dir: str | Path) -> datasets.Dataset:
    """Encoded records of one file, cached under `cache_dir` by file content + tokenizer (not by length limits)."""
    records = load_records(path)
    key = hashlib.sha256(f"{CACHE_VERSION}|{content_digest(path)}|{tokenizer_digest(tokenizer)}".encode())
    cache_file = Path(cache_dir) / f"sft-{key.hexdigest()[:32]}.arrow"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    return records.map(lambda r, i: encode_messages(tokenizer, normalize_record(r, f"{path}, record {i + 1}")),
                       with_indices=True, remove_columns=records.column_names, cache_file_name=str(cache_file),
                       new_fingerprint=key.hexdigest(), desc=f"tokenising {Path(path).name}")


def filter_by_length(data: datasets.Dataset, min_length: int, max_length: int, name: str) -> datasets.Dataset:
    """Drop samples longer than max_length, shorter than min_length or without a supervised token; log the counts."""
    lengths, supervised = np.asarray(data["length"]), np.asarray(data["n_supervised"])
    too_long = lengths > max_length
    too_short = (lengths < min_length) & ~too_long
    unsupervised = (supervised == 0) & ~too_long & ~too_short  # each sample counted under its first reason
    keep = ~(too_long | too_short | unsupervised)
    counts = (f"{name}: {len(data)} samples, kept {int(keep.sum())}; dropped {int(too_long.sum())} over "
              f"max_length={max_length}, {int(too_short.sum())} under min_length={min_length}, "
              f"{int(unsupervised.sum())} without a supervised (assistant) token")
    if not keep.any():
        raise ValueError(f"no samples left: {counts}")
    log.info(counts)
    return data.select(np.flatnonzero(keep))


class ChatDataModule(L.LightningDataModule):
    """Shared part of the DataModules: the tokenizer (loaded lazily) and resumable length-grouped loaders over
    `train_data` / `val_data` (datasets with input_ids, labels and length columns) that subclasses set in `setup`."""

    def __init__(self, tokenizer: str | None, batch_size: int, num_workers: int, seed: int,
                 cache_dir: str | None) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size={batch_size}, num_workers={num_workers}: expected >= 1 and >= 0")
        self.tokenizer_path, self.batch_size, self.num_workers, self.seed = tokenizer, batch_size, num_workers, seed
        self.cache_dir = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.train_data: datasets.Dataset | None = None
        self.val_data: datasets.Dataset | None = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.load_tokenizer()

    def load_tokenizer(self, where: str = "model") -> PreTrainedTokenizerBase:
        """The tokenizer, loaded on first use; errors about `tokenizer_path` name `where` (train.py: --model.model)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_path, where)
        return self._tokenizer

    def length_fields(self) -> dict[str, int | list[int]]:
        """The init arguments that bound a sample's length in tokens, by name (train.py checks them against the
        model's context)."""
        return {}

    def _loader(self, data: datasets.Dataset, train: bool) -> ResumableDataLoader | RestartingDataLoader:
        """Split over the trainer's ranks (one rank without a trainer); right padding. Training: shuffled, resumable
        mid-epoch; validation: in order, every pass from the first batch. Worker seeds come from a generator of the
        loader's own, so that making an iterator leaves torch's global generator (dropout's) as it was."""
        replicas, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        sampler = LengthGroupedBatchSampler(np.asarray(data["length"]), self.batch_size, seed=self.seed,
                                            shuffle=train, num_replicas=replicas, rank=rank)
        loader = ResumableDataLoader if train else RestartingDataLoader
        return loader(data.select_columns(["input_ids", "labels"]), batch_sampler=sampler,
                      collate_fn=PadCollator(self.tokenizer.pad_token_id), num_workers=self.num_workers,
                      worker_init_fn=worker_ignores_stop_signals, generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> ResumableDataLoader:
        return self._loader(self.train_data, train=True)

    def val_dataloader(self) -> RestartingDataLoader | list:
        return self._loader(self.val_data, train=False) if self.val_data is not None else []


class SFTDataModule(ChatDataModule):
    """Supervised fine-tuning on local chat files; loss only on assistant turns.

    Args:
        train_files: training files: parquet, jsonl, json, arrow, or folders written by `Dataset.save_to_disk`;
            records in any format of `swaa.data.chat.normalize_record` (see data/README.md).
        val_files: validation files; None = hold out `val_fraction` of the training samples.
        tokenizer: model path for `swaa.models.load_tokenizer`; None = the embedded SmolLM2.
        max_length: drop samples with more tokens than this (chat template included).
        min_length: drop samples with fewer tokens than this.
        val_fraction: share of training samples held out (seeded) when `val_files` is None; 0 = no validation.
        batch_size: samples per batch and device.
        num_workers: DataLoader worker processes.
        seed: seed of the validation split and of the batch order.
        cache_dir: where tokenised files are cached; None = ~/.cache/swaa/data.
    """

    def __init__(self, train_files: list[str], val_files: list[str] | None = None, tokenizer: str | None = None,
                 max_length: int = 4096, min_length: int = 1, val_fraction: float = 0.05, batch_size: int = 1,
                 num_workers: int = 0, seed: int = 0, cache_dir: str | None = None) -> None:
        super().__init__(tokenizer, batch_size, num_workers, seed, cache_dir)
        if not train_files:
            raise ValueError("SFTDataModule: train_files is empty")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction}: expected 0 <= val_fraction < 1")
        if min_length < 1 or max_length < min_length:
            raise ValueError(f"min_length={min_length}, max_length={max_length}: expected 1 <= min_length <= "
                             f"max_length")
        self.save_hyperparameters()
        self.train_files, self.val_files = list(train_files), list(val_files or [])
        self.max_length, self.min_length, self.val_fraction = max_length, min_length, val_fraction

    def length_fields(self) -> dict[str, int | list[int]]:
        return {"max_length": self.max_length}

    def _encode(self, files: list[str], name: str) -> datasets.Dataset:
        data = datasets.concatenate_datasets([encode_file(f, self.tokenizer, self.cache_dir) for f in files])
        return filter_by_length(data, self.min_length, self.max_length, name)

    def prepare_data(self) -> None:
        for f in self.train_files + self.val_files:
            encode_file(f, self.tokenizer, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        train = self._encode(self.train_files, "train")
        if self.val_files:
            self.train_data, self.val_data = train, self._encode(self.val_files, "val")
        elif self.val_fraction > 0:
            if len(train) < 2:
                raise ValueError(f"val_fraction={self.val_fraction} needs >= 2 training samples, have {len(train)}")
            n_val = min(len(train) - 1, max(1, round(self.val_fraction * len(train))))
            order = np.random.default_rng(self.seed).permutation(len(train))
            self.train_data, self.val_data = train.select(np.sort(order[n_val:])), train.select(np.sort(order[:n_val]))
        else:
            self.train_data = train
        log.info("SFT data: %d train, %d val samples", len(self.train_data),
                 len(self.val_data) if self.val_data is not None else 0)

    def val_prompts(self) -> list[dict]:
        """Held-out items for generation-based validation: the last user message and the last assistant answer."""
        if self.val_data is None:
            return []
        return [{"prompt": p, "answers": [a], "scorer": "contains"}
                for p, a in zip(self.val_data["prompt"], self.val_data["answer"])]
