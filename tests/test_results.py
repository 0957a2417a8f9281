"""The JSONL result store: resume, no stale reuse, atomic appends and torn-line recovery."""

import gzip
import json
import math
import os

from pathlib import Path

import pytest

from swaa.eval.results import (KEY_FIELDS, ResultStore, accuracy_stderr, key_hash, load_records, load_samples,
                               make_key, of_configs, of_tasks, path_identity, read_jsonl)

ROOT = Path(__file__).resolve().parents[1]


def _key(**changes):
    fields = dict(model="m.gguf", model_id="id0", adapter=None, adapter_id=None, swaa_tag="w256",
                  swaa={"window": 256, "sink": 0, "fa_decode": False, "full_layers": []}, task="passkey",
                  length=1024, n=4, seed=0, max_new_tokens=16, prompt_template="t0", scorer="contains", data_id=None)
    fields.update(changes)
    return make_key(**fields)


def _add(store, key, scores=(1.0, 0.0, 1.0, 1.0)):
    return store.add(key, list(scores), [{"i": i} for i in range(len(scores))], time_s=0.5)


def test_accuracy_stderr_binomial_and_continuous():
    assert accuracy_stderr([1, 0, 1, 1]) == (0.75, pytest.approx(math.sqrt(0.75 * 0.25 / 4)))
    mean, se = accuracy_stderr([0.5, 1.0, 0.0])
    assert mean == 0.5 and se == pytest.approx(0.5 / math.sqrt(3))
    with pytest.raises(ValueError, match="empty"):
        accuracy_stderr([])


def test_add_then_resume_from_disk(tmp_path):
    store = ResultStore(tmp_path)
    key = _key()
    assert not store.done(key)
    record = _add(store, key)
    assert record["accuracy"] == 0.75 and record["n"] == 4 and record["config_name"] == "w256"
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / record["samples_file"]).stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    samples = (tmp_path / record["samples_file"]).read_text().splitlines()
    assert [json.loads(s) for s in samples] == [{"i": i} for i in range(4)]
    reopened = ResultStore(tmp_path)
    assert reopened.done(key) and reopened.get(key)["accuracy"] == 0.75
    assert load_records(tmp_path) == reopened.records()


@pytest.mark.parametrize("field, value", [
    ("model_id", "id1"), ("adapter", "lora"), ("adapter_id", "a1"), ("swaa_tag", "w512"),
    ("swaa", {"window": 256, "sink": 4, "fa_decode": False, "full_layers": []}), ("task", "niah_single"),
    ("length", 2048), ("n", 8), ("seed", 1), ("max_new_tokens", 32), ("prompt_template", "t1"), ("scorer", "all_of"),
    ("data_id", "d1"), ("model", "other.gguf"),
])
def test_any_changed_setting_is_a_new_cell(tmp_path, field, value):
    store = ResultStore(tmp_path)
    _add(store, _key())
    assert field in KEY_FIELDS
    assert not ResultStore(tmp_path).done(_key(**{field: value}))


def test_backend_is_a_new_cell_but_auto_keeps_old_keys(tmp_path):
    store = ResultStore(tmp_path)
    _add(store, _key())
    assert _key(backend="auto") == _key() and "backend" not in _key()
    assert ResultStore(tmp_path).done(_key(backend="auto"))
    assert not ResultStore(tmp_path).done(_key(backend="fa4"))


def test_of_tasks_keeps_those_tasks_and_names_missing_ones(tmp_path):
    store = ResultStore(tmp_path)
    for task in ("passkey", "niah_single"):
        _add(store, _key(task=task))
    records = store.records()
    assert [r["key"]["task"] for r in of_tasks(records, ["niah_single"])] == ["niah_single"]
    assert of_tasks(records, None) == records
    with pytest.raises(ValueError,
                       match=r"--tasks: \['kv'\] not in the records; they have \['niah_single', 'passkey'\]"):
        of_tasks(records, ["passkey", "kv"])


def test_of_configs_keeps_those_rows_and_names_missing_ones(tmp_path):
    store = ResultStore(tmp_path)
    for name in ("fa", "w256"):
        store.add(_key(swaa_tag=name), [1.0], [{"i": 0}], time_s=0.5, config_name=name)
    records = store.records()
    assert [r["config_name"] for r in of_configs(records, ["w256"])] == ["w256"]
    assert of_configs(records, None) == records
    with pytest.raises(ValueError, match="--configs: got an empty list; name at least one, or leave --configs out"):
        of_configs(records, [])  # e.g. `--configs ,`
    with pytest.raises(ValueError, match=r"--configs: \['half'\] not in the records; they have \['fa', 'w256'\]"):
        of_configs(records, ["fa", "half"])


def test_make_key_rejects_missing_and_unknown_fields():
    fields = dict(_key())
    del fields["seed"]
    with pytest.raises(ValueError, match=r"missing fields \['seed'\]"):
        make_key(**fields)
    with pytest.raises(ValueError, match=r"unknown fields \['temperature'\]"):
        make_key(**_key(), temperature=0.0)


def test_torn_last_line_is_ignored_and_cut_before_the_next_append(tmp_path, caplog):
    store = ResultStore(tmp_path)
    first = _key()
    _add(store, first)
    with open(store.path, "ab") as f:  # a crash in the middle of a write
        f.write(b'{"key": {"model": "m.gg')
    reopened = ResultStore(tmp_path)
    assert "torn last line" in caplog.text
    assert reopened.done(first) and len(reopened.records()) == 1
    second = _key(seed=1)
    _add(reopened, second)
    lines = store.path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])
    assert {r["key_hash"] for r in read_jsonl(store.path)} == {key_hash(first), key_hash(second)}


def test_corrupt_middle_line_is_an_error(tmp_path):
    _add(ResultStore(tmp_path), _key())
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('not json\n{"key_hash": "b"}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:2: not a JSON record"):
        ResultStore(tmp_path)


@pytest.mark.parametrize("line, problem", [
    ('{"a": 1}', "missing 'key', 'key_hash', 'config_name', 'accuracy', 'stderr', 'n', 'n_unparsed', 'speed'"),
    ('{"key_hash": "a", "accuracy": 1.0}', "missing 'key', 'config_name', 'stderr', 'n', 'n_unparsed', 'speed'"),
    ('[1, 2]', "not a JSON object"),
    ('{"key": "k", "key_hash": "a", "config_name": "c", "accuracy": 1, "stderr": 0, "n": 1, "n_unparsed": 0, '
     '"speed": null}', "field 'key' is 'k', expected a JSON object")])
def test_a_line_that_is_not_a_result_record_is_an_error_naming_file_line_and_what_is_missing(tmp_path, line, problem):
    _add(ResultStore(tmp_path), _key())
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write(line + "\n")
    for load in (load_records, ResultStore):
        with pytest.raises(ValueError) as e:
            load(tmp_path)
        assert str(e.value) == f"{tmp_path / 'results.jsonl'}:2: not a SWAA result record ({problem})"


def test_a_record_whose_key_lacks_key_fields_is_an_error_naming_them(tmp_path):
    record = _add(ResultStore(tmp_path), _key())
    del record["key"]["task"], record["key"]["length"]
    (tmp_path / "other.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=r"other.jsonl:1: not a SWAA result record \(its key is missing 'task', "
                                         r"'length'\)"):
        load_records(tmp_path / "other.jsonl")


@pytest.mark.parametrize("field, value, expected", [
    ("accuracy", "x", "a number"), ("accuracy", True, "a number"), ("accuracy", None, "a number"),
    ("stderr", "0.1", "a number or null"), ("n", 4.0, "an int"), ("n", False, "an int"), ("n_unparsed", None, "an int"),
    ("config_name", 3, "a string"), ("key_hash", None, "a string"), ("speed", [1.0], "a JSON object or null"),
])
def test_a_record_field_of_another_type_is_an_error_naming_file_line_field_and_value(tmp_path, field, value, expected):
    """What the readers would fail on later (a TypeError in a table, a wrong sum); JSON true/false are no numbers."""
    record = _add(ResultStore(tmp_path / "store"), _key())
    (tmp_path / "other.jsonl").write_text(json.dumps(record) + "\n" + json.dumps({**record, field: value}) + "\n")
    with pytest.raises(ValueError) as e:
        load_records(tmp_path / "other.jsonl")
    assert str(e.value) == (f"{tmp_path / 'other.jsonl'}:2: not a SWAA result record (field {field!r} is {value!r}, "
                            f"expected {expected})")


def test_records_as_written_read_back_and_null_stderr_is_allowed(tmp_path):
    """One non-binary score has a NaN stderr (written as NaN); a record from elsewhere may give null instead."""
    record = _add(ResultStore(tmp_path), _key(), scores=(0.5,))
    assert math.isnan(ResultStore(tmp_path).get(_key())["stderr"]) and record["speed"] is None
    (tmp_path / "other.jsonl").write_text(json.dumps({**record, "stderr": None, "accuracy": 1}) + "\n")
    assert load_records(tmp_path / "other.jsonl")[0]["stderr"] is None


def test_every_committed_results_file_passes_the_record_check():
    """records/*/results.jsonl (behind RESULTS.md) and the test fixture: every line is a SWAA result record."""
    committed = sorted((ROOT / "records").glob("*/results.jsonl"))
    assert committed, "no records/*/results.jsonl found"
    for path in [*committed, ROOT / "tests" / "fixtures" / "results" / "results.jsonl"]:
        assert read_jsonl(path, results=True), f"{path} holds no records"


def test_a_file_that_is_not_text_is_an_error_naming_it(tmp_path):
    (tmp_path / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ValueError, match=r"plot.png:1: not a JSON record \('utf-8' codec can't decode"):
        load_records(tmp_path / "plot.png")


def test_later_record_for_the_same_key_wins(tmp_path):
    store = ResultStore(tmp_path)
    _add(store, _key(), scores=[0.0, 0.0])
    _add(store, _key(), scores=[1.0, 1.0])
    assert [r["accuracy"] for r in ResultStore(tmp_path).records()] == [1.0]


def test_path_identity_tracks_file_changes(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    before = path_identity(folder)
    assert path_identity(folder) == before
    (folder / "weights.bin").write_bytes(b"123")
    assert path_identity(folder) != before
    assert path_identity(None) is None
    with pytest.raises(FileNotFoundError, match="missing"):
        path_identity(tmp_path / "missing")


def test_load_records_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results at"):
        load_records(tmp_path / "nowhere")


def _compact(folder, out):
    """The committed-records form of a result folder: results.jsonl pointing into one samples.jsonl.gz."""
    out.mkdir()
    records, samples = ResultStore(folder).records(), []
    for record in records:
        samples += [{**s, "key_hash": record["key_hash"]} for s in load_samples(folder, record)]
        record["samples_file"] = "samples.jsonl.gz"
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "samples.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(s) + "\n" for s in samples).encode()))


def test_compact_records_read_like_the_store(tmp_path):
    store = ResultStore(tmp_path / "run")
    first, second = _add(store, _key()), _add(store, _key(length=2048), scores=[0.0, 1.0])
    _compact(tmp_path / "run", tmp_path / "compact")
    compact = {r["key_hash"]: r for r in load_records(tmp_path / "compact")}
    assert set(compact) == {first["key_hash"], second["key_hash"]}
    assert [compact[first["key_hash"]][f] for f in ("accuracy", "n", "key")] == [0.75, 4, first["key"]]
    assert load_samples(tmp_path / "compact", compact[first["key_hash"]]) == [{"i": i} for i in range(4)]
    assert load_samples(tmp_path / "compact", compact[second["key_hash"]]) == [{"i": 0}, {"i": 1}]
    with pytest.raises(ValueError, match="2 samples for key_hash .* expected n=3"):
        load_samples(tmp_path / "compact", {**compact[second["key_hash"]], "n": 3})


def test_truncated_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "samples.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"a": 1}\n')[:-6])
    with pytest.raises(ValueError, match="cannot read results file"):
        read_jsonl(path)
