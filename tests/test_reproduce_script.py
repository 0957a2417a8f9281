"""configs/experiment/reproduce.sh, run with a stub `python` that records its calls: what each stage reads exists."""

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "configs" / "experiment" / "reproduce.sh"


def _run(repo: Path, calls: Path) -> list[list[str]]:
    """Run the script copied into `repo`; the argument lists of the python calls it made."""
    env = {**os.environ, "PATH": f"{repo / 'bin'}{os.pathsep}{os.environ['PATH']}", "M": "/models/m.gguf"}
    subprocess.run(["bash", str(repo / "configs" / "experiment" / "reproduce.sh")], env=env, check=True,
                   capture_output=True, text=True, timeout=60)
    return [shlex.split(line) for line in calls.read_text().splitlines()] if calls.exists() else []


@pytest.fixture
def stub_repo(tmp_path):
    (tmp_path / "configs" / "experiment").mkdir(parents=True)
    shutil.copy(SCRIPT, tmp_path / "configs" / "experiment")
    (tmp_path / "bin").mkdir()
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "bin" / "python"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%q " "$@" >> {calls}\necho >> {calls}\n')
    stub.chmod(0o755)
    return tmp_path, calls


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_every_stage_reads_what_exists_or_an_earlier_stage_wrote(stub_repo):
    repo, calls = stub_repo
    runs = _run(repo, calls)
    trained, evaluated, selected = [], [], []
    for args in runs:
        if args[:2] == ["train.py", "fit"]:
            config = Path(_flag(args, "--config"))
            assert (ROOT / config).is_file(), config
            assert _flag(args, "--model.model") == "/models/m.gguf" and _flag(args, "--ckpt_path") == "last"
            init = _flag(args, "--model.init_weights")
            assert init is None or str(Path(init).parent) in trained, f"{config} starts from {init}, not trained before"
            if config.stem.startswith("swaa_ft"):
                assert init == "runs/teacher_fa_more/checkpoints/last.ckpt"  # every SWAA-FT from the final teacher
            logger = yaml.safe_load((ROOT / config).read_text())["trainer"]["logger"]["init_args"]
            name = _flag(args, "--trainer.logger.init_args.name") or logger["name"]
            trained.append(f"runs/{name}/checkpoints")  # train.py: <default_root_dir>/<name>/checkpoints
        elif args[:2] == ["-m", "swaa.select"]:
            assert str(Path(_flag(args, "--adapter")).parent) in trained
            selected.append(_flag(args, "--out"))
        elif args[0] == "evaluate.py":
            adapter = _flag(args, "--adapter")
            assert str(Path(adapter).parent) in trained, adapter
            presets = _flag(args, "--presets")
            assert presets is None or presets in selected or (ROOT / presets).is_file(), f"{presets}: no such file"
            grid = yaml.safe_load((ROOT / _flag(args, "--swaa")).read_text())["configs"]
            names = _flag(args, "--configs")
            assert names is None or set(names.split(",")) <= set(grid), names
            evaluated.append(_flag(args, "--out"))
        elif args[:2] == ["-m", "swaa.eval.report"]:
            assert set(args[2:args.index("--out")]) == set(evaluated)  # the table holds every evaluation
            assert _flag(args, "--fa-run") == "teacher_fa_more"  # % of FA: the teacher every SWAA-FT started from
    assert {f"runs/{run}/checkpoints" for run in ("teacher_fa", "teacher_fa_more", "swaa_ft_fad_half_w1024",
                                                   "swaa_ft_sink_half_w1024",
                                                   "swaa_ft_fad_greedy_quarter_w1024",
                                                   "swaa_ft_fad_greedy_quarter_w1024_kl",
                                                   "swaa_ft_fad_greedy_4of30_w1024_kl",
                                                   "swaa_ft_fad_greedy512_quarter_w512_kl",
                                                   "swaa_ft_greedynofad_quarter_w1024_kl",
                                                   "swaa_ft_fad_quarter_w1024_kl")} <= set(trained)
    assert selected and "results/selection" in evaluated  # RESULTS.md section 5
    assert runs[-1][:2] == ["-m", "swaa.eval.report"]


def test_a_second_run_skips_every_finished_stage(stub_repo):
    repo, calls = stub_repo
    first = _run(repo, calls)
    calls.unlink()
    assert first and _run(repo, calls) == []
    assert len(list((repo / "runs" / ".done").iterdir())) == len(first)
