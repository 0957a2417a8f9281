"""JSONL result store: one record per evaluation cell, keyed by every setting that can change its outcome.

Records are appended atomically to `results.jsonl`; per-sample outputs go to `samples/<key-hash>.jsonl`.
Committed records use a compact form the loaders also read: `samples_file` names one `samples.jsonl.gz` for the
whole folder, whose lines are the samples of every record, each with its record's `key_hash` added.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from swaa.files import truncate_torn_tail, write_atomic

log = logging.getLogger(__name__)
RESULTS_FILE = "results.jsonl"
SAMPLES_DIR = "samples"
KEY_FIELDS = ("model", "model_id", "adapter", "adapter_id", "swaa_tag", "swaa", "task", "length", "n", "seed",
              "max_new_tokens", "prompt_template", "scorer", "data_id")
"""Every field of a record key; two cells share a record only if all of them are equal."""
DEFAULTED_KEY_FIELDS = {"backend": "auto"}
"""Key fields left out of the key at their default value, so records made before the field existed keep their keys."""
RECORD_FIELDS = {"key": ((dict,), "a JSON object"), "key_hash": ((str,), "a string"),
                 "config_name": ((str,), "a string"), "accuracy": ((int, float), "a number"),
                 "stderr": ((int, float, type(None)), "a number or null"), "n": ((int,), "an int"),
                 "n_unparsed": ((int,), "an int"), "speed": ((dict, type(None)), "a JSON object or null")}
"""The fields of a result record that its readers use (ResultStore.add writes these and more): the JSON types they
read, and those types in words (true and false are no numbers)."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def path_identity(path: str | Path | None) -> str | None:
    """Hash of a file's or folder's identity: resolved path, and (relative name, size, mtime) of every file."""
    if path is None:
        return None
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [(str(p.relative_to(path)) if path.is_dir() else p.name, p.stat().st_size, p.stat().st_mtime_ns)
             for p in files]
    return _digest(json.dumps([str(path), stats]))


def text_identity(text: str | None) -> str | None:
    """Short hash of a text such as a chat template; None stays None."""
    return None if text is None else _digest(text)


def make_key(**fields: Any) -> dict[str, Any]:
    """A record key holding exactly KEY_FIELDS, plus each DEFAULTED_KEY_FIELDS field given at another value than its
    default; a missing or unknown field is an error."""
    missing = sorted(set(KEY_FIELDS) - set(fields))
    unknown = sorted(set(fields) - set(KEY_FIELDS) - set(DEFAULTED_KEY_FIELDS))
    if missing or unknown:
        raise ValueError(f"record key: missing fields {missing}, unknown fields {unknown}; expected {KEY_FIELDS} "
                         f"and optionally {sorted(DEFAULTED_KEY_FIELDS)}")
    key = {name: fields[name] for name in KEY_FIELDS}
    key.update({name: fields[name] for name, default in DEFAULTED_KEY_FIELDS.items()
                if fields.get(name, default) != default})
    return key


def key_hash(key: dict[str, Any]) -> str:
    return _digest(json.dumps(key, sort_keys=True))


def of_tasks(records: list[dict[str, Any]], tasks: list[str] | None) -> list[dict[str, Any]]:
    """The records of these tasks (all of them for None); a task without records is an error."""
    return _of(records, tasks, lambda r: r["key"]["task"], "--tasks")


def of_configs(records: list[dict[str, Any]], configs: list[str] | None) -> list[dict[str, Any]]:
    """The records of these configuration names (all of them for None); a name without records is an error."""
    return _of(records, configs, lambda r: r["config_name"], "--configs")


def _of(records, wanted, value_of, option):
    """The records whose `value_of` is in `wanted` (all for None); an error names `option` and what is there."""
    if wanted is None:
        return records
    if not wanted:
        raise ValueError(f"{option}: got an empty list; name at least one, or leave {option} out for all of them")
    present = sorted({value_of(r) for r in records})
    missing = sorted(set(wanted) - set(present))
    if missing:
        raise ValueError(f"{option}: {missing} not in the records; they have {present}")
    return [r for r in records if value_of(r) in wanted]


def accuracy_stderr(scores: list[float]) -> tuple[float, float]:
    """Mean and its standard error: binomial sqrt(p(1-p)/n) for 0/1 scores, sample std / sqrt(n) otherwise."""
    n = len(scores)
    if n == 0:
        raise ValueError("cannot summarise an empty list of scores")
    mean = sum(scores) / n
    if all(s in (0, 1) for s in scores):
        return mean, math.sqrt(mean * (1 - mean) / n)
    if n == 1:
        return mean, float("nan")
    var = sum((s - mean) ** 2 for s in scores) / (n - 1)
    return mean, math.sqrt(var / n)


def _record_problem(record: Any) -> str | None:
    """What keeps `record` from being a SWAA result record (a missing field, a field of another type, a missing key
    field); None if nothing."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [name for name in RECORD_FIELDS if name not in record]
    if missing:
        return f"missing {', '.join(map(repr, missing))}"
    for name, (types, expected) in RECORD_FIELDS.items():
        if isinstance(record[name], bool) or not isinstance(record[name], types):
            return f"field {name!r} is {record[name]!r}, expected {expected}"
    missing = [name for name in KEY_FIELDS if name not in record["key"]]
    return f"its key is missing {', '.join(map(repr, missing))}" if missing else None


def read_jsonl(path: str | Path, results: bool = False) -> list[dict[str, Any]]:
    """Records of a JSONL file, gzip-compressed if its name ends in .gz; a torn last line (a crash mid-write) is
    skipped with a warning. With `results`, a line that is not a SWAA result record is an error."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read results file {path}: {e}") from e
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    if torn.strip():
        log.warning("%s: ignoring a torn last line (%d bytes, no newline)", path, len(torn))
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}:{number}: not a JSON record ({e}); the results file is corrupt") from e
        problem = _record_problem(records[-1]) if results else None
        if problem:
            raise ValueError(f"{path}:{number}: not a SWAA result record ({problem})")
    return records


class ResultStore:
    """Results of evaluation cells in `out_dir`; later records for the same key replace earlier ones."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.path = self.dir / RESULTS_FILE
        self._records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for record in read_jsonl(self.path, results=True):
                self._records[record["key_hash"]] = record

    def records(self) -> list[dict[str, Any]]:
        return list(self._records.values())

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        return self._records.get(key_hash(key))

    def done(self, key: dict[str, Any]) -> bool:
        return key_hash(key) in self._records

    def add(
        self,
        key: dict[str, Any],
        scores: list[float],
        samples: list[dict[str, Any]],
        time_s: float,
        n_unparsed: int = 0,
        speed: dict[str, float] | None = None,
        config_name: str | None = None,
    ) -> dict[str, Any]:
        """Summarise `scores`, write `samples` to their side file, append the record; returns it."""
        if len(scores) != len(samples):
            raise ValueError(f"{len(scores)} scores for {len(samples)} samples")
        accuracy, stderr = accuracy_stderr(scores)
        h = key_hash(key)
        samples_file = Path(SAMPLES_DIR) / f"{h}.jsonl"
        (self.dir / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / samples_file, "".join(json.dumps(s) + "\n" for s in samples))
        record = {"key": key, "key_hash": h, "config_name": config_name or key["swaa_tag"], "accuracy": accuracy,
                  "stderr": stderr, "n": len(scores), "n_unparsed": n_unparsed, "time_s": time_s, "speed": speed,
                  "samples_file": str(samples_file), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._append(json.dumps(record) + "\n")
        self._records[h] = record
        return record

    def _append(self, line: str) -> None:
        """One os.write with O_APPEND, then fsync; a torn tail left by a crash is cut off first."""
        truncate_torn_tail(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            data = line.encode()
            if os.write(fd, data) != len(data):
                raise OSError(f"{self.path}: short write while appending a record")
            os.fsync(fd)
        finally:
            os.close(fd)


def load_records(paths: str | Path | Iterable[str | Path]) -> list[dict[str, Any]]:
    """Records from result folders or JSONL files (later records for the same key win); one without any is an error."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    merged: dict[str, dict[str, Any]] = {}
    for p in map(Path, paths):
        file = p / RESULTS_FILE if p.is_dir() else p
        if not file.is_file():
            raise FileNotFoundError(f"no results at {p} (expected a {RESULTS_FILE} file or a folder holding one)")
        records = read_jsonl(file, results=True)
        if not records:
            raise ValueError(f"no evaluation records in {file}")
        for record in records:
            merged[record["key_hash"]] = record
    return list(merged.values())


def load_samples(folder: str | Path, record: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-sample outputs of one record of the result folder `folder`, from its own file or the compact .gz."""
    path = Path(folder) / record["samples_file"]
    if path.suffix != ".gz":
        return read_jsonl(path)
    samples = [s for s in read_jsonl(path) if s.get("key_hash") == record["key_hash"]]
    if len(samples) != record["n"]:
        raise ValueError(f"{path}: {len(samples)} samples for key_hash {record['key_hash']}, expected n={record['n']}")
    return [{k: v for k, v in s.items() if k != "key_hash"} for s in samples]
