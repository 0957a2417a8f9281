"""Loading user evaluation files (parquet, jsonl, json) as Samples, and the errors for bad files."""

import json

import pandas as pd
import pytest

from swaa.eval.datasets import load_eval_file
from swaa.tasks.scorers import score

ROWS = [
    {"id": "q1", "context": "The sky is green here.", "question": "What colour is the sky?", "answer": "green"},
    {"id": "q2", "context": "Bob is 7.", "question": "How old is Bob?", "answer": ["7", "seven"]},
    {"id": "q3", "context": "Pick one.", "question": "Which city is in France?", "answer": "B",
     "choices": ["London", "Paris", "Rome"]},
]


def write(path, rows):
    if path.suffix == ".parquet":
        # a parquet column holds one type: every answer as a list
        listed = [{**row, "answer": [a] if isinstance(a := row["answer"], str) else a} if "answer" in row else row
                  for row in rows]
        pd.DataFrame(listed).to_parquet(path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".json"])
def test_formats_give_the_same_samples(tmp_path, suffix):
    samples = load_eval_file(write(tmp_path / f"mine{suffix}", ROWS))
    assert [s.id for s in samples] == ["q1", "q2", "q3"]
    assert samples[0].prompt == "The sky is green here.\n\nWhat colour is the sky?"
    assert samples[0].answers == ["green"] and samples[0].scorer == "contains" and samples[0].choices is None
    assert samples[1].answers == ["7", "seven"]
    assert samples[2].scorer == "choice" and samples[2].choices == ["London", "Paris", "Rome"]
    assert all(s.task == "mine" and s.length is None and s.depth is None for s in samples)
    assert score(samples[2].scorer, "Answer: B", samples[2].answers, samples[2].choices) == 1.0


def test_prompt_field_answers_alias_default_ids_and_limit(tmp_path):
    rows = [{"prompt": "Say hi.", "answers": ["hi", "hello"]}, {"prompt": "Count.", "answers": 3},
            {"prompt": "Third.", "answers": "x"}]
    path = write(tmp_path / "plain.jsonl", rows)
    samples = load_eval_file(path, limit=2)
    assert [s.id for s in samples] == ["plain-0", "plain-1"]
    assert samples[0].prompt == "Say hi." and samples[0].answers == ["hi", "hello"] and samples[1].answers == ["3"]
    assert len(load_eval_file(path)) == 3
    with pytest.raises(ValueError, match="limit must be >= 1"):
        load_eval_file(path, limit=0)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_rows_of_one_file_may_take_either_form(tmp_path, suffix):
    """data/README.md's example mixes `context` + `question` with `prompt`, and `answer` with `answers`: the other
    rows' fields are missing values in a row, not its fields."""
    rows = [{"context": "Alice moved to Oslo.", "question": "Where does Alice live?", "answer": ["Oslo"]},
            {"prompt": "Which planet is largest?", "choices": ["Mars", "Jupiter"], "answer": ["B"]},
            {"prompt": "Say hi.", "answers": ["hi", "hello"]}]
    samples = load_eval_file(write(tmp_path / f"mixed{suffix}", rows))
    assert [s.prompt for s in samples] == ["Alice moved to Oslo.\n\nWhere does Alice live?",
                                           "Which planet is largest?", "Say hi."]
    assert [s.answers for s in samples] == [["Oslo"], ["B"], ["hi", "hello"]]
    assert [s.scorer for s in samples] == ["contains", "choice", "contains"]
    with pytest.raises(ValueError, match="row 1: field 'prompt' must be a non-empty string"):
        load_eval_file(write(tmp_path / f"none{suffix}", [rows[0], {"prompt": None, "answer": ["x"]}]))


def test_missing_fields_are_named(tmp_path):
    path = write(tmp_path / "bad.jsonl", [{"context": "c", "text": "t"}])
    with pytest.raises(ValueError) as error:
        load_eval_file(path)
    message = str(error.value)
    assert "bad.jsonl" in message and "'prompt' (or 'context' and 'question')" in message
    assert "'answer' (or 'answers')" in message and "['context', 'text']" in message


@pytest.mark.parametrize("row, match", [
    ({"prompt": "p", "answer": None}, "row 0: field 'answer' must be a non-empty string"),
    ({"prompt": "p", "answer": []}, "row 0: field 'answer'"),
    ({"prompt": "", "answer": "a"}, "row 0: field 'prompt' must be a non-empty string"),
    ({"prompt": "p", "answer": "Z", "choices": ["x", "y"]}, "row 0: answer 'Z' is neither a letter A-B"),
    ({"prompt": "p", "answer": "A", "choices": "x, y"}, "row 0: field 'choices' must be a list"),
])
def test_bad_rows(tmp_path, row, match):
    with pytest.raises(ValueError, match=match):
        load_eval_file(write(tmp_path / "rows.jsonl", [row]))


def test_a_file_without_rows_is_named(tmp_path):
    path = tmp_path / "zero.parquet"
    pd.DataFrame({"prompt": pd.Series([], dtype=str), "answer": pd.Series([], dtype=str)}).to_parquet(path)
    with pytest.raises(ValueError, match=r"eval file .*zero.parquet: no rows"):
        load_eval_file(path)


def test_unreadable_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        load_eval_file(tmp_path / "absent.jsonl")
    with pytest.raises(ValueError, match=r"data.csv: unsupported format '.csv'"):
        load_eval_file(write(tmp_path / "data.csv", ROWS))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: cannot read it as json"):
        load_eval_file(broken)
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet")
    with pytest.raises(ValueError, match="fake.parquet: cannot read it as parquet"):
        load_eval_file(fake)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_numbers_keep_their_exact_text_in_files_with_missing_values(tmp_path, suffix):
    """An int answer of a row beside rows without that field reads '42', never '42.0' (pandas' float column), so a
    correct prediction '42' scores 1; a float stays as written."""
    rows = [{"prompt": "6*7?", "answer": 42, "id": 7}, {"prompt": "colour?", "answers": ["red"]},
            {"prompt": "half?", "answer": 0.5}]
    path = tmp_path / f"mixed{suffix}"
    if suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)  # answer and id become float columns with NaN
    else:
        write(path, rows)
    samples = load_eval_file(path)
    assert [s.answers for s in samples] == [["42"], ["red"], ["0.5"]]
    assert [s.id for s in samples] == ["7", "mixed-1", "mixed-2"]
    assert score(samples[0].scorer, "42", samples[0].answers, samples[0].choices) == 1.0


def test_a_row_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "p", "answer": "a"}\n["p", "a"]\n')
    with pytest.raises(ValueError, match=r"rows.jsonl, row 1: expected a JSON object, got \['p', 'a'\]"):
        load_eval_file(path)
