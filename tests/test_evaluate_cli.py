"""evaluate.py: bad input exits with a clear message before loading a model; a tiny run prints the table; Ctrl-C
exits 130 with one line, and the same command resumes."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import interrupted_at_call

import evaluate
from swaa.eval import runner
from swaa.eval.results import load_records
from swaa.tasks.generators import TASKS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_loading(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the error")
    for name in ("load_model", "load_tokenizer", "_load_model", "_model_identity"):
        monkeypatch.setattr(runner, name, forbidden)


def error_line(capsys, argv: list[str]) -> str:
    """The last stderr line of evaluate.py run with `argv`, which must end with exit status 2 (a bad input)."""
    with pytest.raises(SystemExit) as exc:
        evaluate.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize("argv, message", [
    (["--swaa", "fa,bogus"], r"unknown SWAA preset 'bogus'"),
    (["--swaa", '{"window": -1}'], r"SWAAConfig.window=-1"),
    (["--swaa", "missing_grid.yaml"], r"error: --swaa missing_grid.yaml: cannot read grid file"),
    (["--configs", "fa,bogus"], r"--configs: \['bogus'\] not in the grid; it has fa, naive_swa"),
    (["--swaa", ""], r"error: --swaa '': empty; give a grid YAML, preset names or inline JSON, or leave --swaa out"),
])
def test_bad_input_exits_2_before_loading(no_loading, capsys, argv, message):
    line = error_line(capsys, argv)
    assert line.startswith("evaluate.py: error:") and re.search(message, line)


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "argument --n: expected an integer >= 1, got '0'"),
    (["--max-new-tokens", "0"], "argument --max-new-tokens: expected an integer >= 1, got '0'"),
    (["--batch-size", "-2"], "argument --batch-size: expected an integer >= 1, got '-2'"),
    (["--lengths", "256,0"], "--lengths: expected an integer >= 1, got '0'"),
    (["--data", "q.jsonl", "--tasks", "passkey"], "--data q.jsonl: a data file brings its own samples; do not also "
                                                  "give --tasks or --lengths"),
    (["--scorer", "judge"], "--scorer judge: needs --judge-model, the model that judges the answers"),
    (["--judge-model", "j", "--scorer", "contains"], "--judge-model j: needs --scorer judge, got --scorer contains"),
    (["--device", "bogus"], "--device='bogus': expected a torch device such as cpu, cuda or cuda:1"),
    (["--tasks", "passkey,bogus"], f"--tasks bogus: unknown task; choose from {', '.join(TASKS)}"),
    (["--tasks", "nope", "passkey", "bogus"], f"--tasks nope, bogus: unknown tasks; choose from {', '.join(TASKS)}"),
    (["--tasks", "passkey", "passkey"], "--tasks passkey: given more than once; give each value once"),
    (["--lengths", "256,512", "256"], "--lengths 256: given more than once; give each value once"),
])
def test_bad_flag_values_name_the_flag_value_and_range(no_loading, capsys, argv, message):
    """Errors name the flags the user typed (not GridSettings' n=, data_file=, scorer=, judge_model=, device=)."""
    assert error_line(capsys, argv).endswith(f"error: {message}")


@pytest.mark.parametrize("model, message", [
    ("tiny:llama:0:49152", "--model='tiny:llama:0:49152': need layers >= 1 and vocab >= 2"),
    ("tiny:llama:2:256", "--model='tiny:llama:2:256': vocab 256 is smaller than the SmolLM2 tokenizer's"),
    ("{tmp}/model", "--model {tmp}/model: expected a Hugging Face folder with config.json or a .gguf file"),
])
def test_bad_model_names_the_flag_before_loading(monkeypatch, tmp_path, capsys, model, message):
    """The flag the user typed, not the library's `model=`, before any weights load."""
    monkeypatch.setattr(runner, "_load_model", lambda *a: pytest.fail("a model was loaded before the error"))
    (tmp_path / "model").mkdir()  # a folder without config.json
    argv = ["--model", model.format(tmp=tmp_path), "--swaa", "fa", "--tasks", "passkey", "--lengths", "256", "--n", "1",
            "--out", str(tmp_path / "out")]
    assert error_line(capsys, argv).startswith(f"evaluate.py: error: {message.format(tmp=tmp_path)}")


@pytest.mark.parametrize("judge, message", [
    ("tiny:llama:0:49152", "--judge-model='tiny:llama:0:49152': need layers >= 1 and vocab >= 2"),
    ("{tmp}/judge", "--judge-model {tmp}/judge: expected a Hugging Face folder with config.json or a .gguf file"),
    ("{tmp}/missing", "--judge-model {tmp}/missing: expected a Hugging Face folder with config.json or a .gguf file"),
])
def test_bad_judge_model_names_the_flag_before_loading(monkeypatch, tmp_path, capsys, judge, message):
    """The flag the user typed, not the library's `judge_model` (nor a bare path that does not exist), before the
    tokenizer or any weights load."""
    for name in ("load_tokenizer", "_load_model"):
        monkeypatch.setattr(runner, name, lambda *a: pytest.fail("a model or tokenizer was loaded before the error"))
    (tmp_path / "judge").mkdir()  # a folder without config.json
    argv = ["--model", "tiny:llama:2:49152", "--scorer", "judge", "--judge-model", judge.format(tmp=tmp_path), "--swaa",
            "fa", "--tasks", "passkey", "--lengths", "256", "--n", "1", "--out", str(tmp_path / "out")]
    assert error_line(capsys, argv) == f"evaluate.py: error: {message.format(tmp=tmp_path)}"


def test_unknown_scorer_names_the_flag_and_the_choices(no_loading, capsys):
    line = error_line(capsys, ["--scorer", "bogus"])
    assert re.search(r": error: argument --scorer: invalid choice: 'bogus' \(choose from .*exact.*judge", line)


@pytest.mark.parametrize("flag", ["--configs", "--tasks", "--lengths"])
def test_option_given_without_values_is_an_error(flag, no_loading, tmp_path, capsys):
    """'--configs ,' (every value empty) must not fall back to every configuration."""
    argv = ["--model", "tiny:llama:2:49152", "--swaa", "fa,naive_swa", flag, ",", "--out", str(tmp_path)]
    assert error_line(capsys, argv).endswith(f"{flag}: no values given")


def test_missing_presets_file_exits_2_before_loading(no_loading, tmp_path, capsys):
    """--presets naming no file is an input error even when no preset name is used (here: inline JSON only)."""
    missing = tmp_path / "missing.yaml"
    argv = ["--presets", str(missing), "--swaa", '{"window": 64}', "--out", str(tmp_path / "out")]
    assert error_line(capsys, argv).endswith(f"error: --presets {missing}: no such file")


def test_invalid_presets_yaml_is_one_line_with_its_position(no_loading, tmp_path, capsys):
    """A tab-indented presets file: one line naming the flag, the file and where, not the YAML library's report."""
    presets = tmp_path / "my.yaml"
    presets.write_text("mine:\n\twindow: 64\n")
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--presets", str(presets), "--swaa", "mine", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2 and err[-1].endswith(f"error: --presets {presets}: invalid YAML at line 2, column 1 "
                                                    "(found character '\\t' that cannot start any token)")
    assert not any("^" in line or "<unicode string>" in line for line in err)


def test_invalid_grid_yaml_is_one_line_with_its_position(no_loading, tmp_path, capsys):
    """`--swaa my_grid.yaml` that YAML cannot read: one line naming the flag, the file and where, not the library's
    report."""
    grid = tmp_path / "my_grid.yaml"
    grid.write_text("configs: [fa\n  n: 1\n")
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--swaa", str(grid), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2
    assert err == [f"evaluate.py: error: --swaa {grid}: invalid YAML at line 2, column 4 (expected ',' or ']', but got "
                   "':'; while parsing a flow sequence at line 1, column 10)"]


@pytest.mark.parametrize("text, message", [
    ("configs: [fa]\nn: 0\n", "n=0: expected an int >= 1"),
    ("configs: [fa]\nbatch_size: true\n", "batch_size=True: expected an int >= 1"),
    ("configs: [fa, bogus]\n", "config bogus: unknown SWAA preset 'bogus'"),
    ("configs: [fa]\ntemperature: 0.5\n", "unknown grid key(s) ['temperature']"),
    ("[fa]\n", "expected a mapping with a 'configs' key"),
])
def test_bad_grid_value_names_the_flag_and_file_and_exits_2(no_loading, tmp_path, capsys, text, message):
    """`--swaa my_grid.yaml: ...`, as `--presets my.yaml: ...` (load_grid itself names the file alone)."""
    grid = tmp_path / "my_grid.yaml"
    grid.write_text(text)
    assert error_line(capsys, ["--swaa", str(grid), "--out", str(tmp_path / "out")]).startswith(
        f"evaluate.py: error: --swaa {grid}: {message}")


def test_bad_data_file_exits_2_before_loading(no_loading, tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"prompt": "q?"}\n')
    assert re.search(r"missing field\(s\) 'answer' \(or 'answers'\)", error_line(capsys, ["--data", str(data)]))
    data.write_text("{not json\n")
    assert "cannot read it as jsonl" in error_line(capsys, ["--data", str(data)])


def test_data_file_is_evaluated_whole_unless_n_is_given(monkeypatch, capsys):
    """The grid's n (2 in the default grid) is for synthetic tasks: --data takes every row, --n the first n."""
    seen = []

    def settings_of(configs, settings, model, adapter, where, judge_where):
        seen.append(settings.n)
        raise ValueError("stop here")

    monkeypatch.setattr(evaluate, "run_grid", settings_of)
    for argv in (["--data", "qa.jsonl"], ["--data", "qa.jsonl", "--n", "3"]):
        assert error_line(capsys, argv) == "evaluate.py: error: stop here"
    assert seen == [None, 3]


def test_layer_beyond_the_models_depth_exits_before_any_config_runs(monkeypatch, tmp_path, capsys):
    """A grid whose second config names layer 5 of a 2-layer model fails before the first config is evaluated."""
    monkeypatch.setattr(runner, "load_tokenizer", lambda path, where: (_ for _ in ()).throw(AssertionError("loaded")))
    swaa = '{"a": {}, "b": {"window": 8, "full_layers": [5]}}'
    line = error_line(capsys, ["--model", "tiny:llama:2:49152", "--swaa", swaa, "--tasks", "passkey", "--lengths",
                               "256", "--n", "1", "--out", str(tmp_path)])
    assert re.search(r"config b: SWAAConfig.full_layers: layer indices \[5\] out of range", line)
    assert not (tmp_path / "results.jsonl").exists()


def test_tiny_run_prints_table(smollm2_tokenizer, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(runner, "load_tokenizer", lambda path, where: smollm2_tokenizer)
    evaluate.main(["--model", "tiny:llama:2:49152", "--swaa", "fa,naive_swa,sink", "--configs", "fa,naive_swa",
                   "--tasks", "passkey", "--lengths", "256", "--n", "2", "--max-new-tokens", "3",
                   "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| config | passkey@256 |" in out and "| fa |" in out and "| naive_swa |" in out
    assert "| sink |" not in out  # --configs picks from the grid
    assert f"accuracy_plot: {tmp_path / 'accuracy.png'}" in out
    assert (tmp_path / "results.jsonl").is_file() and (tmp_path / "table.csv").is_file()


def test_backend_is_part_of_the_result_key(smollm2_tokenizer, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(runner, "load_tokenizer", lambda path, where: smollm2_tokenizer)
    argv = ["--model", "tiny:llama:2:49152", "--swaa", "naive_swa", "--tasks", "passkey", "--lengths", "256",
            "--n", "2", "--max-new-tokens", "3", "--out", str(tmp_path)]
    evaluate.main(argv)
    evaluate.main(argv + ["--backend", "reference"])  # a new cell, not the auto one read back
    keys = [r["key"] for r in load_records(tmp_path)]
    assert len(keys) == 2 and "backend" not in keys[0] and keys[1]["backend"] == "reference"
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--backend", "bogus"])
    assert "--backend: invalid choice: 'bogus'" in capsys.readouterr().err


def test_two_fa_configs_in_one_run_give_a_table(smollm2_tokenizer, monkeypatch, tmp_path, capsys, caplog):
    """Two FA-tagged configurations of one grid: the table compares to the one named 'fa' and says so."""
    monkeypatch.setattr(runner, "load_tokenizer", lambda path, where: smollm2_tokenizer)
    evaluate.main(["--model", "tiny:llama:2:49152", "--swaa", '{"fa": {}, "full": {"window": null}}', "--tasks",
                   "passkey", "--lengths", "256", "--n", "1", "--max-new-tokens", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| fa |" in out and "| full |" in out
    assert "2 full-attention rows ['fa', 'full'] for backend 'auto'; '% of FA' uses 'fa'" in caplog.text


@pytest.mark.slow
def test_default_run_on_smollm2(tmp_path):
    """The real default grid on the embedded SmolLM2, with one sample per cell and one length."""
    result = subprocess.run([sys.executable, "evaluate.py", "--n", "1", "--lengths", "1024", "--tasks", "passkey",
                             "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| sink_fa_decode_interleave_half |" in result.stdout and (tmp_path / "accuracy.png").is_file()


def test_ctrl_c_says_what_was_saved_and_resumes(smollm2_tokenizer, monkeypatch, tmp_path, capsys):
    """Ctrl-C in the second cell: exit 130, one line on stderr, no traceback; the same command runs only that cell."""
    monkeypatch.setattr(runner, "load_tokenizer", lambda path, where: smollm2_tokenizer)
    argv = ["--model", "tiny:llama:2:49152", "--swaa", "fa,naive_swa", "--tasks", "passkey", "--lengths", "256",
            "--n", "1", "--max-new-tokens", "2", "--out", str(tmp_path)]
    generate = interrupted_at_call(runner.generate_answers, 2)
    monkeypatch.setattr(runner, "generate_answers", generate)
    with pytest.raises(SystemExit) as exc:
        evaluate.main(argv)
    assert exc.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"evaluate.py: interrupted; finished cells are saved in {tmp_path / 'results.jsonl'}; run the "
                       "same command again to resume")
    assert not any("Traceback" in line for line in err)
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 1  # the first cell is stored
    evaluate.main(argv)
    assert len(generate.calls) == 3  # the resumed run generated only the interrupted cell
    assert "| fa |" in capsys.readouterr().out


def test_ctrl_c_before_any_cell_finished_says_nothing_was_saved(smollm2_tokenizer, monkeypatch, tmp_path, capsys):
    """Ctrl-C while the model loads: exit 130, and the line does not claim saved cells."""
    monkeypatch.setattr(runner, "load_tokenizer", lambda path, where: smollm2_tokenizer)
    monkeypatch.setattr(runner, "_load_model", interrupted_at_call(runner._load_model, 1))
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--model", "tiny:llama:2:49152", "--swaa", "fa", "--tasks", "passkey", "--lengths", "256",
                       "--n", "1", "--out", str(tmp_path)])
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"evaluate.py: interrupted; no cell had finished; nothing was saved in {tmp_path / 'results.jsonl'}")
    assert not (tmp_path / "results.jsonl").exists()


def test_default_adapter_is_the_teacher_for_the_embedded_model():
    from evaluate import DEFAULT_ADAPTER, parse_args
    assert parse_args([]).adapter == str(DEFAULT_ADAPTER) and (DEFAULT_ADAPTER / "adapter_config.json").is_file()
    assert parse_args(["--adapter", "none"]).adapter is None
    assert parse_args(["--model", "m.gguf"]).adapter is None
    assert parse_args(["--model", "m.gguf", "--adapter", "a"]).adapter == "a"


def test_lists_accept_commas_and_spaces():
    from evaluate import parse_args
    args = parse_args(["--tasks", "passkey,niah_single", "kv_retrieval", "--lengths", "1024,2048", "4096"])
    assert args.tasks == ["passkey", "niah_single", "kv_retrieval"] and args.lengths == [1024, 2048, 4096]
