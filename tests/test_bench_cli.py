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


def test_help_lists_every_job_from_another_directory():
    out = bench_help()
    assert "usage: python -m swaa.bench" in out
    for job in ("model", "kernels", "train", "profile"):
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
