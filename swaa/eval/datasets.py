"""User evaluation files (parquet, jsonl, json) loaded as Samples: prompt or context + question, answer(s), choices."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from swaa.tasks.generators import Sample
from swaa.tasks.scorers import choice_index

log = logging.getLogger(__name__)


def _json_rows(path: Path) -> list:
    """The rows of a .json file (a list) or a .jsonl file (one per non-blank line), values exactly as written."""
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = json.loads(text)
    if not isinstance(rows, list):
        raise ValueError(f"expected a list of row objects, got a {type(rows).__name__}")
    return rows


def _parquet_rows(path: Path) -> list:
    """The rows of a parquet file; an integral value of a float column (an int column with missing values, as
    pandas writes it) reads as an int, so 42 stays '42', not '42.0'."""
    table = pq.read_table(path)
    floats = {f.name for f in table.schema if pa.types.is_floating(f.type)}
    return [{k: int(v) if k in floats and v is not None and float(v).is_integer() else v for k, v in row.items()}
            for row in table.to_pylist()]


READERS = {".parquet": _parquet_rows, ".jsonl": _json_rows, ".json": _json_rows}


def _read(path: Path) -> tuple[list[dict], list[str]]:
    """(rows, fields) of an eval file: every row holds every field of the file, None where the row lacks it."""
    if path.suffix not in READERS:
        raise ValueError(f"eval file {path}: unsupported format {path.suffix!r}; use one of {', '.join(READERS)}")
    if not path.is_file():
        raise FileNotFoundError(f"eval file {path} does not exist or is not a file")
    try:
        rows = READERS[path.suffix](path)
    except Exception as e:  # json/pyarrow raise many types for malformed files
        raise ValueError(f"eval file {path}: cannot read it as {path.suffix[1:]} ({type(e).__name__}: {e})") from e
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if bad is not None:
        raise ValueError(f"eval file {path}, row {bad}: expected a JSON object, got {rows[bad]!r}")
    fields = list(dict.fromkeys(f for row in rows for f in row))
    return [{f: row.get(f) for f in fields} for row in rows], fields


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _strings(value: object, path: Path, row: int, field: str) -> list[str]:
    """A string or a list of strings (numbers accepted) as a non-empty list of strings."""
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if not items or any(_missing(v) or isinstance(v, (dict, list)) or str(v).strip() == "" for v in items):
        raise ValueError(f"eval file {path}, row {row}: field {field!r} must be a non-empty string or list of "
                         f"strings, got {value!r}")
    return [str(v) for v in items]


def _text(record: dict, field: str, path: Path, row: int) -> str:
    value = record[field]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"eval file {path}, row {row}: field {field!r} must be a non-empty string, got {value!r}")
    return value


def _field(record: dict, *names: str) -> str:
    """The first of `names` this row has a value for, else the first the file has (its check then names it): in a
    file of mixed rows the other rows' fields are columns with missing values."""
    return next((f for f in names if f in record and not _missing(record[f])), next(f for f in names if f in record))


def _sample(record: dict, row: int, path: Path) -> Sample:
    if _field(record, "prompt", "context", "question") == "prompt":
        prompt = _text(record, "prompt", path, row)
    else:
        prompt = f"{_text(record, 'context', path, row)}\n\n{_text(record, 'question', path, row)}"
    answer_field = _field(record, "answer", "answers")
    answers = _strings(record[answer_field], path, row, answer_field)
    raw_choices = record.get("choices")
    choices = None
    if isinstance(raw_choices, str):
        raise ValueError(f"eval file {path}, row {row}: field 'choices' must be a list, got {raw_choices!r}")
    if not _missing(raw_choices):
        choices = _strings(raw_choices, path, row, "choices")
        for answer in answers:
            try:
                choice_index(answer, choices)
            except ValueError as e:
                raise ValueError(f"eval file {path}, row {row}: {e}") from e
    sample_id = f"{path.stem}-{row}" if _missing(record.get("id")) else str(record["id"])
    return Sample(id=sample_id, task=path.stem, prompt=prompt, answers=answers,
                  scorer="contains" if choices is None else "choice", choices=choices)


def load_eval_file(path: str | Path, limit: int | None = None) -> list[Sample]:
    """Samples from a parquet/jsonl/json file with, per row, `prompt` (or `context` + `question`, joined by a blank
    line), `answer` or `answers` (string or list), optional `choices` (list; scored with "choice", else "contains"),
    `id`; the first `limit` rows, all for None."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    rows, fields = _read(path)
    if not rows:
        raise ValueError(f"eval file {path}: no rows")
    missing = []
    if "prompt" not in fields and not {"context", "question"} <= set(fields):
        missing.append("'prompt' (or 'context' and 'question')")
    if "answer" not in fields and "answers" not in fields:
        missing.append("'answer' (or 'answers')")
    if missing:
        raise ValueError(f"eval file {path}: missing field(s) {', '.join(missing)}; the file has fields {fields}")
    samples = [_sample(record, row, path) for row, record in enumerate(rows[:limit])]
    log.info("loaded %d samples from %s", len(samples), path)
    return samples

