"""Report tables (accuracy ± stderr, % of FA, n) and PNG plots from stored records."""

import math
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.container import BarContainer

from swaa import SWAAConfig
from swaa.eval.report import (config_colors, main, markdown_table, of_configs_with_fa, plot_accuracy, records_frame,
                               summary_table, write_report)
from swaa.eval.results import ResultStore, load_records, make_key, of_tasks

CONFIGS = {"fa": SWAAConfig(), "naive": SWAAConfig(window=256), "sink": SWAAConfig(window=256, sink=4)}
SCORES = {"fa": [1, 1, 1, 0], "naive": [0, 0, 1, 0], "sink": [1, 1, 0, 0]}


def _records(tmp_path, speed=True, adapter=None):
    store = ResultStore(tmp_path)
    for name, config in CONFIGS.items():
        for task in ("passkey", "niah_single"):
            for length in (1024, 2048):
                key = make_key(model="/m/SmolLM2.gguf", model_id="id", adapter=adapter, adapter_id=None,
                               swaa_tag=config.tag, swaa=config.to_dict(), task=task, length=length, n=4, seed=0,
                               max_new_tokens=16, prompt_template="t", scorer="contains", data_id=None)
                timing = {"prefill_ms": length / (1 if name == "fa" else 2), "decode_ms_per_token": 5.0}
                store.add(key, [float(s) for s in SCORES[name]], [{}] * 4, 1.0, speed=timing if speed else None,
                          config_name=name)
    return store.records()


def test_summary_table_values(tmp_path):
    table = summary_table(_records(tmp_path)).set_index("config")
    assert list(table.index) == ["fa", "naive", "sink"]
    assert table.loc["fa", "passkey@1024"] == 0.75
    assert table.loc["fa", "passkey@1024 se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert table.loc["naive", "mean"] == 0.25
    assert table.loc["naive", "mean se"] == pytest.approx(math.sqrt(4 * 0.75 * 0.25 / 4) / 4)
    assert table.loc["fa", "% of FA"] == 100
    assert table.loc["naive", "% of FA"] == pytest.approx(100 / 3)
    assert table.loc["sink", "% of FA"] == pytest.approx(200 / 3)
    assert (table["n"] == 4).all()
    assert table.loc["sink", "prefill ms@2048"] == 1024


def test_markdown_table(tmp_path):
    md = markdown_table(summary_table(_records(tmp_path)))
    lines = md.splitlines()
    assert lines[0].startswith("| config | passkey@1024 | passkey@2048 | niah_single@1024 | niah_single@2048 | mean")
    assert "% of FA" in lines[0] and "prefill ms@1024" in lines[0]
    assert lines[2].startswith("| fa | 75.0 ± 21.7 |") and "| 100% | 4 |" in lines[2]
    assert "| 33% |" in lines[3]


def test_no_fa_row_and_multiple_runs(tmp_path):
    records = [r for r in _records(tmp_path / "a", speed=False) if r["config_name"] != "fa"]
    records += _records(tmp_path / "b", speed=False, adapter="/ckpt/lora")
    table = summary_table(records)
    assert set(table["run"]) == {"SmolLM2.gguf", "SmolLM2.gguf + lora"}
    assert table.loc[table["run"] == "SmolLM2.gguf", "% of FA"].isna().all()
    assert not any(c.startswith("prefill") for c in table.columns)
    ckpts = [r for run in ("teacher", "student") for r in
             _records(tmp_path / run, speed=False, adapter=f"runs/{run}/checkpoints/last.ckpt")]
    assert set(summary_table(ckpts)["run"]) == {"SmolLM2.gguf + teacher", "SmolLM2.gguf + student"}
    other = _records(tmp_path / "mid", speed=False, adapter="runs/teacher/checkpoints/epoch=0-step=50.ckpt")
    assert set(summary_table(other)["run"]) == {"SmolLM2.gguf + teacher/epoch=0-step=50.ckpt"}
    md = markdown_table(table)
    assert md.splitlines()[0].startswith("| run | config |") and "| - |" in md


def test_repeated_cell_keeps_the_last_record(tmp_path, caplog):
    records = _records(tmp_path)
    newer = dict(records[0], accuracy=0.0, key=dict(records[0]["key"], seed=1))
    frame = records_frame([*records, newer])
    assert "replaced" in caplog.text
    assert frame.loc[(frame["config"] == "fa") & (frame["cell"] == "passkey@1024"), "accuracy"].item() == 0.0


def test_a_backend_other_than_auto_is_its_own_row(tmp_path):
    """The same configuration on two attention backends in one folder: two rows, neither replacing the other."""
    records = _records(tmp_path)
    fa4 = [dict(r, accuracy=0.0, key=dict(r["key"], backend="fa4")) for r in records if r["config_name"] == "sink"]
    table = summary_table([*records, *fa4]).set_index("config")
    assert list(table.index) == ["fa", "naive", "sink", "sink [fa4]"]
    assert table.loc["sink [fa4]", "mean"] == 0.0 and table.loc["sink", "mean"] == 0.5


def test_two_fa_rows_of_a_run_compare_each_row_to_the_fa_row_of_its_backend(tmp_path, caplog):
    """FA on two backends in one folder: each backend's rows against its own FA row; two FA rows on one backend
    (or none on the row's): the one named 'fa', with a warning naming it."""
    records = _records(tmp_path)
    on = {name: [dict(r, accuracy=acc, key=dict(r["key"], backend="reference")) for r in records
                 if r["config_name"] == name] for name, acc in (("fa", 0.5), ("sink", 0.25))}
    table = summary_table([*records, *on["fa"], *on["sink"]]).set_index("config")
    assert table.loc["sink [reference]", "% of FA"] == pytest.approx(50)  # 0.25 / 0.5
    assert table.loc["sink", "% of FA"] == pytest.approx(200 / 3)  # 0.5 / 0.75
    assert table.loc["fa [reference]", "% of FA se"] == 0 and "full-attention rows" not in caplog.text
    full = [dict(r, config_name="full", accuracy=0.5) for r in records if r["config_name"] == "fa"]
    table = summary_table([*full, *records, *on["sink"]]).set_index("config")
    assert table.loc["sink", "% of FA"] == pytest.approx(200 / 3) and table.loc["full", "% of FA"] == pytest.approx(
        100 * 0.5 / 0.75)
    assert table.loc["sink [reference]", "% of FA"] == pytest.approx(100 * 0.25 / 0.75)
    assert "has 2 full-attention rows ['fa', 'full'] for backend 'auto'; '% of FA' uses 'fa'" in caplog.text
    assert "for backend 'reference'; '% of FA' uses 'fa'" in caplog.text


def test_write_report_files(tmp_path):
    paths = write_report(_records(tmp_path), tmp_path / "report")
    assert set(paths) == {"markdown", "csv", "accuracy_plot", "speed_plot"}
    for name in ("accuracy_plot", "speed_plot"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = pd.read_csv(paths["csv"])
    assert list(csv["config"]) == ["fa", "naive", "sink"] and "% of FA" in csv.columns
    assert paths["markdown"].read_text().startswith("| config |")
    assert "speed_plot" not in write_report(_records(tmp_path / "nospeed", speed=False), tmp_path / "r2")


def test_cli_merges_a_checkpoint_and_its_exported_adapter(tmp_path, capsys):
    """Records of runs/t/checkpoints/last.ckpt and of the adapter exported from it form one run; the table it writes
    is also printed."""
    _records(tmp_path / "a", speed=False, adapter="runs/t/checkpoints/last.ckpt")
    _records(tmp_path / "b", speed=False, adapter="data/adapters/t")
    main([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "report")])
    assert capsys.readouterr().out == (tmp_path / "report" / "table.md").read_text()
    csv = pd.read_csv(tmp_path / "report" / "table.csv")
    assert list(csv["config"]) == ["fa", "naive", "sink"]
    assert set(csv["run"]) == {"SmolLM2.gguf + t"}
    assert list(csv["% of FA"].round()) == [100, 33, 67]


def test_cli_tasks_keeps_only_their_cells(tmp_path, capsys):
    _records(tmp_path / "r")
    main([str(tmp_path / "r"), "--tasks", "niah_single", "--out", str(tmp_path / "out")])
    header = (tmp_path / "out" / "table.md").read_text().splitlines()[0]
    assert "niah_single@1024" in header and "passkey" not in header
    with pytest.raises(SystemExit):
        main([str(tmp_path / "r"), "--tasks", "bogus", "--out", str(tmp_path / "x")])
    assert "--tasks: ['bogus'] not in the records; they have ['niah_single', 'passkey']" in capsys.readouterr().err


def test_cli_configs_without_fa_warn_that_percent_of_fa_stays_empty(tmp_path, caplog):
    _records(tmp_path / "r")
    main([str(tmp_path / "r"), "--configs", "sink", "--out", str(tmp_path / "out")])
    assert "no FA row among --configs sink: '% of FA' stays empty; list fa too, or pass --fa-run" in caplog.text
    caplog.clear()
    main([str(tmp_path / "r"), "--configs", "sink", "fa", "--out", str(tmp_path / "out")])
    assert "no FA row" not in caplog.text


def test_cli_input_errors_are_parser_errors(tmp_path, capsys):
    """A missing or empty results folder, an empty results file, an unknown --fa-run, an empty --tasks: exit 2."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty_file").mkdir()
    (tmp_path / "empty_file" / "results.jsonl").write_text("")
    _records(tmp_path / "r", speed=False)
    for args, message in (([str(tmp_path / "nowhere")], "no results at"),
                          ([str(tmp_path / "empty")], "no results at"),
                          ([str(tmp_path / "empty_file")], "no evaluation records in"),
                          ([str(tmp_path / "r"), "--fa-run", "nope"], "error: --fa-run='nope' matches 0 runs"),
                          ([str(tmp_path / "r"), "--tasks", ","], "--tasks: got an empty list")):
        with pytest.raises(SystemExit) as e:
            main([*args, "--out", str(tmp_path / "out")])
        assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("given, name, content, problem", [
    ("r", "r/results.jsonl", b'{"key_hash": "a", "accuracy": 1.0}\n',
     "13: not a SWAA result record (missing 'key', 'config_name', 'stderr', 'n', 'n_unparsed', 'speed')"),
    ("r", "r/results.jsonl", b'{"key": {}, "key_hash": "a", "config_name": "c", "accuracy": "0.5", "stderr": null, '
                             b'"n": 1, "n_unparsed": 0, "speed": null}\n',
     "13: not a SWAA result record (field 'accuracy' is '0.5', expected a number)"),
    ("notes.txt", "notes.txt", b"some notes\n", "1: not a JSON record (Expecting value"),
    ("plot.png", "plot.png", b"\x89PNG\r\n\x1a\n", "1: not a JSON record ('utf-8' codec can't decode")])
def test_cli_input_that_is_not_results_is_one_error_line_naming_it(tmp_path, capsys, given, name, content, problem):
    """A result folder with a line that is not a record (after 12 that are), or whose accuracy is text; a text file, a
    binary file: exit 2."""
    _records(tmp_path / "r", speed=False)
    with open(tmp_path / name, "ab") as f:
        f.write(content)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / given), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(
        f"python -m swaa.eval.report: error: {tmp_path / name}:{problem}")


def test_empty_records():
    with pytest.raises(ValueError, match="no evaluation records"):
        summary_table([])


def test_percent_of_fa_compares_the_same_cells(tmp_path):
    records = [r for r in _records(tmp_path) if not (r["config_name"] == "sink" and r["key"]["task"] == "niah_single")]
    for r in records:
        if r["config_name"] == "fa" and r["key"]["task"] == "niah_single":
            r["accuracy"] = 0.0  # FA: 0.75 on passkey, 0 on niah_single; sink ran passkey only (0.5)
    table = summary_table(records).set_index("config")
    assert table.loc["sink", "% of FA"] == pytest.approx(100 * 0.5 / 0.75)
    assert table.loc["naive", "% of FA"] == pytest.approx(100 * 0.25 / 0.375)


def test_accuracy_plot_gives_each_configuration_one_distinct_colour(tmp_path):
    student = [r for r in _records(tmp_path / "b", speed=False, adapter="/ckpt/lora") if r["config_name"] != "fa"]
    fig = plot_accuracy(_records(tmp_path / "a", speed=False) + student)  # the second panel lacks "fa"
    by_label = {}
    for ax in fig.axes:
        for bars in ax.containers:
            if isinstance(bars, BarContainer):
                by_label.setdefault(bars.get_label(), set()).add(bars.patches[0].get_facecolor())
    assert set(by_label) == set(CONFIGS) and all(len(c) == 1 for c in by_label.values())  # same colour in each panel
    assert len({c for cs in by_label.values() for c in cs}) == len(CONFIGS)
    grid = [f"config{i}" for i in range(14)]  # more than tab10's 10 colours
    assert len(set(config_colors(grid).values())) == 14


def test_accuracy_legend_is_beside_the_bars(tmp_path):
    fig = plot_accuracy(_records(tmp_path / "a", speed=False) + _records(tmp_path / "b", speed=False, adapter="/x"))
    fig.canvas.draw()  # Figure() has an Agg canvas: lay out and render once
    figure_box = fig.bbox
    for ax in fig.axes:
        axes_box, legend_box = ax.get_window_extent(), ax.get_legend().get_window_extent()
        assert legend_box.x0 >= axes_box.x1  # right of the axes: covers no bar
        assert legend_box.x1 <= figure_box.x1 and legend_box.y0 >= figure_box.y0  # and not cut off


def test_fa_run_sets_the_reference_of_every_row(tmp_path):
    """--fa-run: '% of FA' of a fine-tuned adapter's rows against the teacher's FA row, with the ratio's stderr."""
    _records(tmp_path / "teacher", speed=False, adapter="data/adapters/teacher")
    student = _records(tmp_path / "student", speed=False, adapter="data/adapters/student")
    for r in student:
        r["accuracy"] = {"fa": 1.0, "naive": 0.5, "sink": 0.75}[r["config_name"]]
    records = load_records(tmp_path / "teacher") + student
    table = summary_table(records, fa_run="teacher").set_index(["run", "config"])
    fa_mean = 0.75
    assert table.loc[("SmolLM2.gguf + student", "sink"), "% of FA"] == pytest.approx(100 * 0.75 / fa_mean)
    assert table.loc[("SmolLM2.gguf + student", "fa"), "% of FA"] == pytest.approx(100 / fa_mean)
    assert table.loc[("SmolLM2.gguf + teacher", "fa"), "% of FA se"] == 0
    naive = table.loc[("SmolLM2.gguf + student", "naive")]
    assert naive["% of FA se"] == pytest.approx(100 / fa_mean * math.hypot(naive["mean se"], 0.5 * 0.108253 / fa_mean),
                                                rel=1e-4)
    assert summary_table(records).set_index(["run", "config"]).loc[("SmolLM2.gguf + student", "sink"), "% of FA"] == 75
    with pytest.raises(ValueError, match="fa_run='nobody' matches 0 runs"):
        summary_table(records, fa_run="nobody")
    main([str(tmp_path / "teacher"), str(tmp_path / "student"), "--fa-run", "teacher", "--out", str(tmp_path / "r")])
    assert "% of FA se" in pd.read_csv(tmp_path / "r" / "table.csv").columns
    main([str(tmp_path / "teacher"), str(tmp_path / "student"), "--fa-run", "teacher", "--configs", "sink",
          "--out", str(tmp_path / "sink")])  # the reference FA row stays, the other run's does not
    sink = pd.read_csv(tmp_path / "sink" / "table.csv").set_index(["run", "config"])
    assert sorted(sink.index) == [("SmolLM2.gguf + student", "sink"), ("SmolLM2.gguf + teacher", "fa"),
                                  ("SmolLM2.gguf + teacher", "sink")]
    on_disk = summary_table(load_records([tmp_path / "teacher", tmp_path / "student"]), "teacher")
    assert sink.loc[("SmolLM2.gguf + student", "sink"), "% of FA"] == pytest.approx(
        on_disk.set_index(["run", "config"]).loc[("SmolLM2.gguf + student", "sink"), "% of FA"])


def test_configs_keep_fa_rows_only_of_runs_with_another_listed_configuration(tmp_path):
    """--configs fa,sink: the FA rows of the runs that have a sink row; fa alone: every FA row; --fa-run's FA row
    stays whatever is listed."""
    teacher = _records(tmp_path / "teacher", speed=False, adapter="data/adapters/teacher")
    student = [r for r in _records(tmp_path / "student", speed=False, adapter="data/adapters/student")
               if r["config_name"] != "sink"]
    records = teacher + student

    def rows(configs, fa_run=None):
        return sorted({(Path(r["key"]["adapter"]).name, r["config_name"])
                       for r in of_configs_with_fa(records, configs, fa_run)})
    assert rows(["fa", "sink"]) == [("teacher", "fa"), ("teacher", "sink")]
    assert rows(["fa", "naive"]) == [("student", "fa"), ("student", "naive"), ("teacher", "fa"), ("teacher", "naive")]
    assert rows(["fa"]) == [("student", "fa"), ("teacher", "fa")]
    assert rows(["naive"], "teacher") == [("student", "naive"), ("teacher", "fa"), ("teacher", "naive")]
    assert rows(["fa", "sink"], "student") == [("student", "fa"), ("teacher", "fa"), ("teacher", "sink")]
    assert of_configs_with_fa(records, None) == records


def test_results_md_tables_are_what_the_report_prints_from_the_records():
    """RESULTS.md shows each table exactly as `python -m swaa.eval.report` prints it from the committed records."""
    root = Path(__file__).resolve().parent.parent
    text = (root / "RESULTS.md").read_text()
    teacher, grid, swaa_ft = (root / "records" / name
                              for name in ("smollm2_teacher", "smollm2_grid", "smollm2_swaa_ft"))
    for folders, fa_run, command in [
            ([teacher], None, "python -m swaa.eval.report records/smollm2_teacher --out"),
            ([teacher, grid], None, "python -m swaa.eval.report records/smollm2_teacher records/smollm2_grid --out"),
            ([teacher, swaa_ft], "teacher_fa_more", "python -m swaa.eval.report records/smollm2_teacher "
                                                    "records/smollm2_swaa_ft --fa-run teacher_fa_more --out")]:
        assert command in text
        assert markdown_table(summary_table(load_records(folders), fa_run)) in text
    selection = load_records(root / "records" / "smollm2_selection")
    trained = [r for r in selection if r["key"]["task"] in ("niah_multikey", "niah_multivalue")]
    for records, command in [(selection, "report records/smollm2_selection --out"),
                             (trained, "report records/smollm2_selection --tasks niah_multikey niah_multivalue --out")]:
        assert command in text and markdown_table(summary_table(records)) in text
    similar = load_records(root / "records" / "smollm2_selection_teacher_similar")
    assert "python -m swaa.eval.report records/smollm2_selection_teacher_similar --out" in text
    for records in (similar, of_tasks(similar, ["niah_multikey", "niah_multivalue", "niah_similar"])):
        assert markdown_table(summary_table(records)) in text
    selection_ft = load_records([root / "records" / "smollm2_selection", root / "records" /
                                 "smollm2_selection_swaa_ft"])
    after_ft = ["fa", "w1024_sink_fad_half", "w1024_sink_fad_quarter", "w1024_sink_fad_greedy_quarter",
                "w1024_sink_fad_greedy_4of30"]
    w512_nofad = ["fa", "w512_sink_fad_half", "w512_sink_fad_greedy512_quarter", "w1024_sink_half",
                  "w1024_sink_greedynofad_quarter"]
    assert (f"--fa-run teacher_fa_more \\\n    --configs {' '.join(after_ft)} \\\n    --out /tmp/selection_ft\n"
            in text)
    assert f"--configs {' '.join(w512_nofad)} \\\n    --out /tmp/selection_ft_w512_nofad\n" in text
    for configs in (after_ft, w512_nofad):
        chosen = of_configs_with_fa(selection_ft, configs, "teacher_fa_more")
        for records in (chosen, of_tasks(chosen, ["niah_multikey", "niah_multivalue"])):
            assert markdown_table(summary_table(records, "teacher_fa_more")) in text
    table = summary_table(load_records([teacher, swaa_ft]), "teacher_fa_more").set_index(["run", "config"])
    headline = table.loc[("SmolLM2-135M-Instruct.Q4_1.gguf + swaa_ft_fad_half_w1024", "w1024_sink_fad_half")]
    assert f"{headline['% of FA']:.1f}% ± {headline['% of FA se']:.1f}" == "95.2% ± 1.3" and "95.2% ± 1.3" in text
