"""python -m swaa.bench: the jobs, their help from any directory, and a model run that writes JSON and Markdown."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from swaa.bench.__main__ import JOBS, main

REPO = Path(__file__).resolve().parents[1]


def bench_help(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "swaa.bench", *args, "--help"], cwd="/tmp", env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_job_imports_without_the_training_data_libraries():
    """The GPU machine has no `datasets`: the benchmarks (the train job's loss included) must not import it."""
    code = "import sys; sys.modules['datasets'] = None; from swaa.bench.__main__ import main; main(['train', '--help'])"
    done = subprocess.run([sys.executable, "-c", code], cwd="/tmp", env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--configs" in done.stdout, done.stderr


def test_help_lists_every_job_from_another_directory():
    out = bench_help()
    assert "usage: python -m swaa.bench" in out
    for job in ("model", "kernels", "sinks", "train", "profile"):
        assert f"    {job} " in out
    assert "--repeats" in bench_help("model") and "--flex-tunings" in bench_help("kernels")


@pytest.mark.parametrize("job", sorted(JOBS))
def test_each_job_has_help(job, capsys):
    with pytest.raises(SystemExit) as stop:
        main([job, "--help"])
    assert stop.value.code == 0 and f"usage: python -m swaa.bench {job}" in capsys.readouterr().out


def test_unknown_job_is_an_error(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["nope"])
    assert stop.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_model_job_writes_json_and_markdown(tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    argv = ["model", "--device", "cpu", "--shape", "tiny:qwen3:2:256", "--lengths", "48", "--decode-tokens", "2",
            "--repeats", "2", "--window", "16", "--sink", "2", "--configs", 'fa,mine={"window": 8, "full_layers": [1]}',
            "--out", str(out), "--markdown", str(md)]
    main(argv)
    data = json.loads(out.read_text())
    meta = data["meta"]
    assert meta["command"] == ["python", "-m", "swaa.bench", *argv] and meta["dtype"] == "fp32"
    assert meta["model"]["model_type"] == "qwen3" and meta["repeats"] == 2 and meta["timer"] == "perf_counter"
    assert [(r["config"], r["status"]) for r in data["rows"]] == [("fa", "ok"), ("mine", "ok")]
    assert data["rows"][1]["tag"] == "w8-full:1" and len(data["rows"][1]["prefill_ms_runs"]) == 2
    table = md.read_text()
    assert table.startswith("| config | tag | length | prefill ms min / median |")
    assert "| mine | w8-full:1 | 48 |" in table and "command: `python -m swaa.bench model" in table
    assert not list(tmp_path.glob(".*.tmp"))


MODEL = ["model", "--device", "cpu", "--shape", "tiny:llama:2:256", "--window", "8", "--sink", "0", "--decode-tokens",
         "2", "--repeats", "1", "--lengths", "32", "--configs", "fa"]
TRAIN = ["train", "--device", "cpu", "--shape", "tiny:llama:2:256", "--configs", "fa,swa_all_fad", "--window", "8",
         "--sink", "0"]
PROFILE = ["profile", "--device", "cpu", "--shape", "tiny:llama:2:256", "--window", "8", "--sink", "0", "--lengths",
           "32", "--configs", "fa"]


@pytest.mark.parametrize("argv, message", [
    (MODEL + ["--repeats", "0"], "argument --repeats: expected an integer >= 1, got '0'"),
    (MODEL + ["--lengths", "0"], "argument --lengths: expected an integer >= 1, got '0'"),
    (MODEL + ["--lengths", ","], "argument --lengths: expected comma-separated integers >= 1, got ','"),
    (MODEL + ["--decode-tokens", "0"], "argument --decode-tokens: expected an integer >= 1"),
    (MODEL + ["--stock-decode-tokens", "0"], "argument --stock-decode-tokens: expected an integer >= 1"),
    (MODEL + ["--device", "bogus"], "--device='bogus': expected a torch device"),
    (MODEL + ["--window", "0", "--configs", "fa,swa_all"], "argument --window: expected an integer >= 1, got '0'"),
    (MODEL + ["--sink", "-1"], "argument --sink: expected an integer >= 0, got '-1'"),
    (MODEL + ["--configs", ","], "--configs ',': no config given"),
    (MODEL + ["--shape", "tiny:llama:0:10"], "--shape='tiny:llama:0:10': need layers >= 1 and vocab >= 2"),
    (PROFILE + ["--shape", "tiny:gpt:2:10"], "--shape='tiny:gpt:2:10': expected 'tiny:<family>:<layers>:<vocab>' with "
                                            "family in"),
    (TRAIN + ["--shape", "qwen9"], "--shape='qwen9': expected one of"),
    (MODEL + ["--presets", "no/such/presets.yaml"], "--presets no/such/presets.yaml: no such file"),
    (PROFILE + ["--presets", "no/such/presets.yaml"], "--presets no/such/presets.yaml: no such file"),
    (TRAIN + ["--presets", "no/such/presets.yaml"], "--presets no/such/presets.yaml: no such file"),
    (MODEL + ["--configs", 'x={"window": 8, "full_layers": [7]}'],
     "--configs x: SWAAConfig.full_layers: layer indices [7] out of range for a model with 2 layers"),
    (MODEL + ["--configs", 'x={"hf_window": true}'], "config 'x': hf_window=True: expected an int >= 1"),
    (MODEL + ["--configs", 'x={"attn_implementation": "fast"}'],
     "config 'x': attn_implementation='fast': expected one of"),
    (TRAIN + ["--backends", "flex,nope"], "--backends 'flex,nope': expected comma-separated names from"),
    (TRAIN + ["--backends", ","], "--backends ',': expected comma-separated names from"),
    (TRAIN + ["--configs", 'x={"hf_window": 8}'], "--configs: transformers' own sliding window (hf_window) is not"),
    (PROFILE + ["--decode-tokens", "0"], "argument --decode-tokens: expected an integer >= 1, got '0'"),
    (PROFILE + ["--device", "bogus"], "--device='bogus'"),
    (TRAIN + ["--lengths", ","], "argument --lengths: expected comma-separated integers >= 1"),
    (TRAIN + ["--lengths", "-4"], "argument --lengths: expected an integer >= 1, got '-4'"),
    (TRAIN + ["--steps", "0"], "argument --steps: expected an integer >= 1, got '0'"),
    (TRAIN + ["--layers", "-2"], "argument --layers: expected an integer >= 1, got '-2'"),
    (TRAIN + ["--device", "bogus"], "--device='bogus'"),
    (TRAIN + ["--layers", "1", "--configs", 'x={"window": 8, "full_layers": [1]}'],
     "--configs x: SWAAConfig.full_layers: layer indices [1] out of range for a model with 1 layers"),
    (["kernels", "--length", "0"], "argument --length: expected an integer >= 1, got '0'"),
    (["kernels", "--window", "0"], "argument --window: expected an integer >= 1, got '0'"),
    (["kernels", "--sinks", "0", "-1"], "argument --sinks: expected an integer >= 0, got '-1'"),
    (["kernels", "--repeats", "0"], "argument --repeats: expected an integer >= 1, got '0'"),
    (["sinks", "--sink", "0"], "argument --sink: expected an integer >= 1, got '0'"),
    (["sinks", "--length", "100", "--window", "200"], "--length=100: expected more tokens than --window=200"),
])
def test_input_errors_are_one_line_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err.splitlines()[-1]


def no_model_built(monkeypatch) -> None:
    """Building a bench model fails the test (the checks must come before any work)."""
    import swaa.bench.model as bench_model
    import swaa.bench.train as bench_train

    for module in (bench_model, bench_train):
        monkeypatch.setattr(module, "random_model", lambda *a, **k: pytest.fail("a model was built"))


CPU_BACKENDS = "available on cpu: ['auto', 'chunked', 'flex', 'reference']"


@pytest.mark.parametrize("argv, message", [
    (MODEL + ["--backend", "fa4"], "--backend fa4: not available on cpu (backend 'fa4' needs a CUDA device"),
    (PROFILE + ["--backend", "flash"], "--backend flash: not available on cpu (backend 'flash' needs a CUDA device"),
    (TRAIN + ["--backends", "flex,cudnn", "--lengths", "32", "--steps", "1"],
     "--backends cudnn: not available on cpu (backend 'cudnn' needs a CUDA device"),
])
def test_a_backend_this_device_lacks_is_an_input_error_before_any_work(argv, message, capsys, monkeypatch):
    """A CUDA-only backend on CPU: one line naming the flag, the backend and those available, before any model."""
    no_model_built(monkeypatch)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.splitlines()
    assert stop.value.code == 2 and message in err[-1] and err[-1].endswith(CPU_BACKENDS)


@pytest.mark.parametrize("argv", [MODEL, PROFILE, TRAIN + ["--lengths", "32", "--steps", "1"]],
                         ids=["model", "profile", "train"])
def test_a_missing_fusion_package_is_an_input_error_before_any_work(argv, capsys, monkeypatch):
    """--fuse liger without liger-kernel (simulated): one line naming the flag, before a model is built."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "liger_kernel" else find_spec(name, *a, **k))
    no_model_built(monkeypatch)
    with pytest.raises(SystemExit) as stop:
        main(argv + ["--fuse", "liger"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("--fuse liger: needs the liger-kernel package, which is "
                                                             "not installed (pip install liger-kernel)")


def test_a_failure_while_timing_keeps_its_traceback(monkeypatch):
    """Only input errors become parser errors: an exception while timing propagates as itself."""
    import swaa.bench.model as bench

    def crash(*args, **kwargs):
        raise ValueError("kernel crashed")

    monkeypatch.setattr(bench, "measure_once", crash)
    with pytest.raises(ValueError, match="kernel crashed"):
        main(MODEL)
