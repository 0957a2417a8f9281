"""swaa.eval.frontier: accuracy (% of FA) matched to the speed of the same fraction of full layers and FA decode."""

import json
import re
from pathlib import Path

import pytest

from swaa import SWAAConfig
from swaa.eval.frontier import frontier_table, full_fraction, headline, main, markdown, plot_frontier
from swaa.eval.results import ResultStore, load_records, make_key, of_tasks, path_identity
from swaa.models import DEFAULT_GGUF
from swaa.tiny import tiny_config

# evaluated on a 8-layer model: accuracy per config (every cell)
EVALUATED = {"fa": (SWAAConfig(), 0.8), "all_swa": (SWAAConfig(window=16), 0.2),
             "quarter_fad": (SWAAConfig(window=16, fa_decode=True, full_layers=[2, 5]), 0.78),
             "half_fad": (SWAAConfig(window=16, fa_decode=True, full_layers="odd"), 0.8),
             "half": (SWAAConfig(window=16, full_layers="odd"), 0.7)}
# timed on a 36-layer shape: (full_layers, fa_decode, prefill speedup at 65536)
TIMED = {"fa": (None, False, 1.0), "swa_all": ([], False, 2.2), "swa_quarter_fad": ("every:4:from:3", True, 1.7),
         "swa_half_fad": ("odd", True, 1.4), "swa_half": ("odd", False, 1.41)}


def records(tmp_path, adapter=None, model="/m/model.gguf", model_id="id"):
    store = ResultStore(tmp_path / "results")
    for name, (config, accuracy) in EVALUATED.items():
        for task in ("passkey", "niah_single"):
            key = make_key(model=model, model_id=model_id, adapter=adapter, adapter_id=adapter and "a",
                           swaa_tag=config.tag, swaa=config.to_dict(), task=task, length=1024, n=10, seed=0,
                           max_new_tokens=8, prompt_template="t", scorer="contains", data_id=None)
            store.add(key, [1.0] * int(10 * accuracy) + [0.0] * (10 - int(10 * accuracy)), [{}] * 10, 1.0,
                      config_name=name)
    return store.records()


def bench_json():
    configs, rows = [], []
    for name, (full_layers, fad, speedup) in TIMED.items():
        swaa = SWAAConfig() if full_layers is None else SWAAConfig(window=2048, sink=64, fa_decode=fad,
                                                                     full_layers=full_layers)
        configs.append({"name": name, "swaa": swaa.to_dict(), "hf_window": None})
        for length, factor in ((65536, 1.0), (131072, 1.5)):
            rows.append({"config": name, "length": length, "status": "ok", "prefill_speedup": speedup * factor,
                         "decode_speedup": 1.0, "static_decode_speedup": 1.1})
    return {"meta": {"model": {"num_hidden_layers": 36}, "configs": configs}, "rows": rows}


def cli_error(capsys, argv):
    """The last line main(argv) writes to stderr as it exits with status 2 (an input error)."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


def test_full_fraction():
    assert full_fraction(SWAAConfig(), 30) == 1.0
    assert full_fraction(SWAAConfig(window=8, full_layers="odd"), 30) == 0.5
    assert full_fraction(SWAAConfig(window=8, full_layers="every:4:from:3"), 30) == pytest.approx(7 / 30)


def test_each_config_gets_the_speed_of_its_fraction_and_fa_decode(tmp_path):
    table = frontier_table(records(tmp_path), bench_json(), 65536, depth=8).set_index("config")
    assert table.loc["quarter_fad", "speed_config"] == "swa_quarter_fad"  # 2 of 8 layers ~ 9 of 36
    assert table.loc["half_fad", "speed_config"] == "swa_half_fad"
    assert table.loc["half", "speed_config"] == "swa_half"  # FA decode off: the row without it
    assert table.loc["all_swa", "prefill_speedup"] == pytest.approx(2.2)
    assert table.loc["fa", "prefill_speedup"] == 1.0
    assert table.loc["quarter_fad", "% of FA"] == pytest.approx(100 * 0.7 / 0.8)  # int(7.8) = 7 of 10 correct
    long = frontier_table(records(tmp_path), bench_json(), 131072, depth=8).set_index("config")
    assert long.loc["half_fad", "prefill_speedup"] == pytest.approx(1.4 * 1.5)


def test_headline_is_the_fastest_config_that_keeps_the_threshold(tmp_path):
    table = frontier_table(records(tmp_path), bench_json(), 65536, depth=8)
    assert headline(table, 95.0)["config"] == "half_fad"  # 100% of FA at 1.4x; quarter_fad keeps only 87.5%
    assert headline(table, 85.0)["config"] == "quarter_fad"
    assert headline(table, 101.0) is None


def test_a_config_without_a_timed_fraction_reads_n_a(tmp_path):
    bench = bench_json()
    bench["rows"] = [r for r in bench["rows"] if r["config"] != "swa_quarter_fad"]  # no timed row for 1/4 + FAD
    table = frontier_table(records(tmp_path), bench, 65536, depth=8)
    row = markdown(table).splitlines()[2:][list(table["config"]).index("quarter_fad")]
    assert row.endswith("| n/a | n/a | n/a |"), row


def test_plot_has_one_labelled_series_per_run(tmp_path):
    two = frontier_table(records(tmp_path / "a") + records(tmp_path / "b", adapter="/runs/tuned"), bench_json(),
                         65536, depth=8)
    ax = plot_frontier(two, 95.0, 65536).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["model.gguf", "model.gguf + tuned"] == list(dict.fromkeys(two["run"]))
    assert len(ax.containers) == 2  # one errorbar series each
    assert plot_frontier(frontier_table(records(tmp_path / "c"), bench_json(), 65536, depth=8), 95.0,
                         65536).axes[0].get_legend() is None  # one run: no legend


def test_cli_writes_table_plot_and_headline(tmp_path, capsys):
    records(tmp_path)
    (tmp_path / "speed.json").write_text(json.dumps(bench_json()))
    main([str(tmp_path / "results"), "--speed", str(tmp_path / "speed.json"), "--depth", "8", "--out",
          str(tmp_path / "out")])
    assert "largest prefill speedup at >= 95% of FA: 1.40x (half_fad, 100.0%)" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "headline.json").read_text())["best"]["config"] == "half_fad"
    assert (tmp_path / "out" / "frontier.png").stat().st_size > 0
    main([str(tmp_path / "results"), "--speed", str(tmp_path / "speed.json"), "--depth", "8", "--tasks", "passkey",
          "--out", str(tmp_path / "passkey")])
    assert (tmp_path / "passkey" / "frontier.csv").is_file()
    assert re.search(r"--tasks: \['bogus'\] not in the records", cli_error(
        capsys, [str(tmp_path / "results"), "--speed", str(tmp_path / "speed.json"), "--tasks", "bogus", "--out",
                 str(tmp_path / "x")]))
    assert "no timed rows at length 1000" in cli_error(
        capsys, [str(tmp_path / "results"), "--speed", str(tmp_path / "speed.json"), "--length", "1000", "--out",
                 str(tmp_path / "x")])


def test_cli_rejects_a_bad_depth_threshold_or_speed_file(tmp_path, capsys):
    records(tmp_path)
    (tmp_path / "speed.json").write_text(json.dumps(bench_json()))
    (tmp_path / "kernels.json").write_text(json.dumps({"meta": {"gpu": "x"}, "rows": []}))
    args = [str(tmp_path / "results"), "--speed", str(tmp_path / "speed.json"), "--out", str(tmp_path / "out")]
    for bad, message in ((["--depth", "0"], "--depth: expected the evaluated model's number of layers, an int >= 1"),
                         (["--threshold", "nan"], "--threshold: expected a finite % of FA > 0; got nan"),
                         (["--threshold", "-5"], "--threshold: expected a finite % of FA > 0; got -5.0")):
        assert message in cli_error(capsys, args + bad)
    assert re.search(r"--depth=4 is not the evaluated model's number of layers: config quarter_fad: .*\[5\] out of "
                     r"range.*largest listed layer index in the records: 5\)",
                     cli_error(capsys, args + ["--depth", "4"]))  # quarter_fad lists layers 2 and 5
    patterns_only = [r for r in load_records(tmp_path / "results") if r["config_name"] != "quarter_fad"]
    with pytest.raises(ValueError, match="--depth=1 .* config half_fad: .*'odd': starts at layer 1, beyond a model"):
        frontier_table(patterns_only, bench_json(), 65536, depth=1)  # 'odd' needs 2 layers
    assert re.search(r"--speed .*kernels.json: expected the JSON of `python -m swaa.bench model`.*KeyError: 'model'",
                     cli_error(capsys, [str(tmp_path / "results"), "--speed", str(tmp_path / "kernels.json"),
                                        "--out", str(tmp_path / "x")]))


def test_depth_other_than_the_records_model_depth_is_an_error_where_that_depth_is_known(tmp_path, capsys, caplog):
    """A tiny spec, the very model folder the records were made with, or the embedded SmolLM2 (by file name) give the
    depth; a model not here leaves only the configs' layer indices to check --depth against."""
    folder = tmp_path / "hf"
    tiny_config("tiny:llama:8:100").save_pretrained(folder)
    (tmp_path / "speed.json").write_text(json.dumps(bench_json()))
    for name, model, model_id, depth in (("tiny", "tiny:llama:8:100", "tiny:llama:8:100", 8),
                                         ("folder", str(folder), path_identity(folder), 8),
                                         ("smollm2", f"/elsewhere/{DEFAULT_GGUF}", "id", 30)):
        records(tmp_path / name, model=model, model_id=model_id)
        args = [str(tmp_path / name / "results"), "--speed", str(tmp_path / "speed.json"), "--out",
                str(tmp_path / name / "out")]
        for bad, word in ((40, "larger"), (depth - 2, "smaller")):  # depth - 2 still fits quarter_fad's layer 5
            assert cli_error(capsys, args + ["--depth", str(bad)]) == (
                f"python -m swaa.eval.frontier: error: --depth {bad}: {word} than the records' model depth {depth} "
                f"(model {model}); the full fractions need --depth {depth}")
        main(args + ["--depth", str(depth)])
        assert (tmp_path / name / "out" / "frontier.csv").is_file()
    records(tmp_path / "changed", model=str(folder), model_id="another file")  # not the folder they were made with
    main([str(tmp_path / "changed" / "results"), "--speed", str(tmp_path / "speed.json"), "--depth", "40", "--out",
          str(tmp_path / "changed" / "out")])
    assert f"model {folder}: its number of layers is not known here; --depth 40 is taken as it" in caplog.text


def test_a_speed_row_of_an_unknown_config_is_an_error_naming_it_the_file_and_the_known_configs(tmp_path, capsys):
    records(tmp_path)
    bench = bench_json()
    bench["rows"].append({**bench["rows"][0], "config": "swa_renamed"})  # timed at 65536: speed_rows reads it
    (tmp_path / "speed.json").write_text(json.dumps(bench))
    assert cli_error(capsys, [str(tmp_path / "results"), "--speed", str(tmp_path / "speed.json"), "--depth", "8",
                              "--out", str(tmp_path / "out")]) == (
        f"python -m swaa.eval.frontier: error: --speed {tmp_path / 'speed.json'}: rows name config(s) ['swa_renamed'] "
        f"that meta.configs does not list; known configs: {list(TIMED)}")


def test_a_run_without_an_fa_row_is_an_error_that_says_how_to_get_one(tmp_path):
    no_fa = [r for r in records(tmp_path) if r["config_name"] != "fa"]
    with pytest.raises(ValueError, match=r"run\(s\) \['model.gguf'\] have no full-attention row .* evaluate them "
                                         r"with config `fa` too, or pass fa_run naming a run that has one"):
        frontier_table(no_fa, bench_json(), 65536, depth=8)


def test_fa_run_errors_name_the_flag_from_the_cli_and_the_argument_from_python(tmp_path, capsys):
    """An --fa-run that names no run: '--fa-run=...' on the command line, 'fa_run=...' from frontier_table."""
    evaluated = records(tmp_path)
    (tmp_path / "speed.json").write_text(json.dumps(bench_json()))
    assert cli_error(capsys, [str(tmp_path / "results"), "--speed", str(tmp_path / "speed.json"), "--depth", "8",
                              "--fa-run", "nobody", "--out", str(tmp_path / "out")]).startswith(
        "python -m swaa.eval.frontier: error: --fa-run='nobody' matches 0 runs []")
    with pytest.raises(ValueError, match=r"^fa_run='nobody' matches 0 runs \[\]"):
        frontier_table(evaluated, bench_json(), 65536, depth=8, fa_run="nobody")


def test_cli_records_that_lack_record_fields_are_one_error_line_naming_file_and_line(tmp_path, capsys):
    """A JSON lines file whose rows are not SWAA records (was: "error: 'key'")."""
    (tmp_path / "speed.json").write_text(json.dumps(bench_json()))
    (tmp_path / "other.jsonl").write_text('{"key_hash": "a"}\n')
    assert cli_error(capsys, [str(tmp_path / "other.jsonl"), "--speed", str(tmp_path / "speed.json"), "--out",
                              str(tmp_path / "out")]) == (
        f"python -m swaa.eval.frontier: error: {tmp_path / 'other.jsonl'}:1: not a SWAA result record (missing 'key', "
        f"'config_name', 'accuracy', 'stderr', 'n', 'n_unparsed', 'speed')")


def test_no_fa_row_above_zero_is_an_error_that_says_so(tmp_path):
    """A tiny smoke run whose FA scores 0 everywhere: '% of FA' is undefined, said in one line (not a KeyError)."""
    zero = [{**r, "accuracy": 0.0} if r["config_name"] == "fa" else r for r in records(tmp_path)]
    with pytest.raises(ValueError, match=r"no FA row scores above 0 on these cells \(runs \['model.gguf'\]\)"):
        frontier_table(zero, bench_json(), 65536, depth=8)


def test_results_md_frontier_is_what_the_committed_records_and_benchmark_give():
    """RESULTS.md section 6 shows the frontier table and headline exactly as computed from the committed files."""
    root = Path(__file__).resolve().parent.parent
    records = of_tasks(load_records([root / "records" / "smollm2_selection", root / "records" /
                                     "smollm2_selection_swaa_ft"]), ["niah_multikey", "niah_multivalue"])
    bench = json.loads((root / "benchmarks" / "model_h100_qwen3_4b_liger_fa4_64k_128k.json").read_text())
    text = (root / "RESULTS.md").read_text()
    assert ("records/smollm2_selection records/smollm2_selection_swaa_ft --fa-run teacher_fa_more" in text
            and "--speed benchmarks/model_h100_qwen3_4b_liger_fa4_64k_128k.json \\\n    --length 65536" in text)
    for length, figure in ((65536, "**2.18x at 64k**"), (131072, "**3.08x at 128k**")):
        table = frontier_table(records, bench, length, depth=30, fa_run="teacher_fa_more")
        best = headline(table, 95.0)
        assert best["config"] == "w1024_sink_fad_greedy_5of30" and f"**{best['prefill_speedup']:.2f}x" in figure
        assert f"{best['% of FA']:.1f} ± {best['% of FA se']:.1f}" == "97.4 ± 1.6" and figure in text
    assert markdown(frontier_table(records, bench, 65536, depth=30, fa_run="teacher_fa_more")) in text
    similar = of_tasks(load_records(root / "records" / "smollm2_selection_teacher_similar"),
                       ["niah_multikey", "niah_multivalue", "niah_similar"])
    best = headline(frontier_table(similar, bench, 65536, depth=30, fa_run="teacher_fa_similar"), 95.0)
    assert best["config"] == "w1024_sink_fad_greedy_5of30"
    figure = f"{best['prefill_speedup']:.2f}x at {best['% of FA']:.1f}% ± {best['% of FA se']:.1f}"
    assert f"the same headline, {figure}" in text
