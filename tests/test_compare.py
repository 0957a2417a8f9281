"""swaa.eval.compare: two results folders matched cell by cell and prediction by prediction."""

import pytest

from swaa.eval.compare import compare, main
from swaa.eval.results import ResultStore, make_key


def _store(folder, model_id: str, predictions: dict[str, list[str]], time_s: float):
    """One cell per task at 1024 tokens; the samples' answer is 'a', so a prediction 'a' scores 1."""
    store = ResultStore(folder)
    for task, preds in predictions.items():
        key = make_key(model="/m/x.gguf", model_id=model_id, adapter=None, adapter_id=None, swaa_tag="w8",
                       swaa={"window": 8}, task=task, length=1024, n=len(preds), seed=0, max_new_tokens=8,
                       prompt_template="t", scorer="contains", data_id=None)
        samples = [{"id": f"{task}-{i}", "answers": ["a"], "prediction": p} for i, p in enumerate(preds)]
        store.add(key, [float(p == "a") for p in preds], samples, time_s, config_name="w8")


def test_counts_identical_predictions_per_cell_across_key_hashes(tmp_path, capsys):
    _store(tmp_path / "gen", "id1", {"passkey": ["a", "b", "a", "c"], "niah": ["a", "a"]}, 10.0)
    _store(tmp_path / "static", "id2", {"passkey": ["a", "b", "x", "c"], "other": ["a"]}, 4.0)  # new model id
    rows = compare(tmp_path / "gen", tmp_path / "static")
    assert [(r["task"], r["identical"], r["n"]) for r in rows] == [("passkey", 3, 4)]
    assert rows[0]["accuracy_a"] == 0.5 and rows[0]["accuracy_b"] == 0.25
    main([str(tmp_path / "gen"), str(tmp_path / "static")])
    assert "| all | | | | | 10.0 | 4.0 | 3/4 |" in capsys.readouterr().out


def test_no_shared_cell_is_an_error(tmp_path):
    _store(tmp_path / "a", "id", {"passkey": ["a"]}, 1.0)
    _store(tmp_path / "b", "id", {"niah": ["a"]}, 1.0)
    with pytest.raises(ValueError, match="no cell"):
        compare(tmp_path / "a", tmp_path / "b")


def test_cli_input_errors_are_one_line(tmp_path, capsys):
    _store(tmp_path / "a", "id", {"passkey": ["a"]}, 1.0)
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "a"), str(tmp_path / "missing")])
    assert exc.value.code == 2 and "missing" in capsys.readouterr().err


def test_a_file_that_is_not_results_is_one_error_line_naming_it(tmp_path, capsys):
    """Was KeyError 'key' from the first line without a record key."""
    _store(tmp_path / "a", "id", {"passkey": ["a"]}, 1.0)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "a"), str(tmp_path / "b")])
    err = capsys.readouterr().err.splitlines()[-1]
    assert exc.value.code == 2 and err.endswith(f"{tmp_path / 'b' / 'results.jsonl'}:1: not a SWAA result record "
                                                "(missing 'key', 'key_hash', 'config_name', 'accuracy', 'stderr', "
                                                "'n', 'n_unparsed', 'speed')")
