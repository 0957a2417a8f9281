"""train.py: a 2-step CPU fit of configs/smoke.yaml, resume with --ckpt_path last, two processes from the command line,
and CLI errors."""

import logging
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train import cli_main, main

from swaa.data import SFTDataModule
from swaa.preemption import SaveOnSigterm
from swaa.runs import DropFailedStart

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "smoke.yaml")


def test_smoke_fit_then_resume_from_last(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", SMOKE, "--data.init_args.cache_dir", str(tmp_path / "cache"),
            "--model.lr_scheduler.init_args.max_steps", "4"]
    cli = cli_main([*args, "--trainer.max_steps", "2"])
    ckpt_dir = tmp_path / "runs" / "smoke" / "checkpoints"
    assert cli.trainer.global_step == 2 and (ckpt_dir / "last.ckpt").is_file()
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and {"val/loss", "val/loss_fa", "val/acc"} <= set(metrics)
    version = tmp_path / "runs" / "smoke" / "version_0"
    assert (version / "config.yaml").is_file() and list(version.glob("events.out.tfevents.*"))
    first = torch.load(ckpt_dir / "last.ckpt", weights_only=True)["state_dict"]

    assert {SaveOnSigterm, DropFailedStart} <= {type(c) for c in cli.trainer.callbacks}
    with pytest.raises(SystemExit, match=f"a run already exists at {ckpt_dir} .*--ckpt_path last"):
        cli_main([*args, "--trainer.max_steps", "3"])  # no --ckpt_path: it would write last-v1.ckpt beside last.ckpt
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]

    lightning_log = logging.getLogger("lightning.pytorch")  # it does not propagate to caplog's root handler
    lightning_log.addHandler(caplog.handler)
    try:
        cli = cli_main([*args, "--trainer.max_steps", "3", "--ckpt_path", "last"])  # as if stopped at step 2 of 4
    finally:
        lightning_log.removeHandler(caplog.handler)
    assert cli.trainer.global_step == 3
    assert f"resumed from {ckpt_dir / 'last.ckpt'} at step 2 (epoch 0)" in caplog.text
    resumed = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 3 and resumed["state_dict"].keys() == first.keys()
    assert any(not torch.equal(resumed["state_dict"][k], first[k]) for k in first)


@pytest.mark.parametrize("extra, message", [
    (["--model.bogus", "1"], "--model.bogus"),
    (["--model.lora.rnk", "4"], "rnk"),
])
def test_cli_rejects_unknown_keys_and_values(extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", SMOKE, *extra, "--print_config"])
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--data.init_args.tasks", "[no_such_task]"], "tasks no_such_task: unknown task; choose from"),
    (["--model.swaa", "nope"], "swaa: unknown SWAA preset 'nope'"),
    (["--model.swaa", "{window: 0}"], "SWAAConfig.window=0"),
    (["--model.lora.dropout", "1.5"], "LoRASettings.dropout=1.5"),
])
def test_cli_rejects_bad_values_when_building(extra, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        cli_main(["--config", SMOKE, *extra], run=False)


def test_unknown_key_in_a_yaml_file_is_an_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  lora: {rank: 4, alhpa: 8}\n")
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", SMOKE, "--config", str(bad), "--print_config"])
    assert "alhpa" in capsys.readouterr().err


def test_a_run_that_fails_before_its_first_step_leaves_no_log_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="nonexistent.ckpt not found"):
        cli_main(["fit", "--config", SMOKE, "--model.init_weights", str(tmp_path / "nonexistent.ckpt")])
    assert not (tmp_path / "runs" / "smoke").exists()


def test_a_failed_start_in_an_existing_log_folder_removes_only_its_own_files(tmp_path, monkeypatch):
    """A fixed logger version (e.g. a resumed run's) names an earlier run's folder: its logs stay."""
    monkeypatch.chdir(tmp_path)
    version = tmp_path / "runs" / "smoke" / "version_0"
    (version / "sub").mkdir(parents=True)
    earlier = {version / "events.out.tfevents.1.host.1.0", version / "sub" / "x"}
    for path in earlier:
        path.write_text("earlier run")
    with pytest.raises(FileNotFoundError, match="nonexistent.ckpt not found"):
        cli_main(["fit", "--config", SMOKE, "--trainer.logger.init_args.version", "0",
                  "--model.init_weights", str(tmp_path / "nonexistent.ckpt")])
    assert set(version.rglob("*")) == earlier | {version / "sub"}  # this run's config.yaml and event file removed
    assert all(p.read_text() == "earlier run" for p in earlier)


def damaged_checkpoint(tmp: Path, kind: str) -> Path:
    """A --ckpt_path file that cannot be resumed from: random bytes, a torch.save file cut in half, empty, missing."""
    path = tmp / f"{kind}.ckpt"
    if kind == "random_bytes":
        path.write_bytes(random.Random(0).randbytes(5000))
    elif kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}, "global_step": 2}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("kind, reason", [
    ("random_bytes", "not the zip archive that torch.save writes (truncated, or not a checkpoint)"),
    ("truncated", "not the zip archive that torch.save writes (truncated, or not a checkpoint)"),
    ("empty", "empty file"),
    ("missing", "no such file"),
])
def test_unreadable_ckpt_path_is_one_error_line_before_anything_is_built(tmp_path, monkeypatch, capsys, kind, reason):
    """Not Lightning's torch.load traceback (or, for a missing file, an error once the model is built): exit 2."""
    monkeypatch.chdir(tmp_path)
    path = damaged_checkpoint(tmp_path, kind)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMOKE, "--ckpt_path", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # (pytest's own command line may add Lightning's warning about it first)
    assert err.splitlines()[-1] == f"train.py: error: --ckpt_path {path}: not a readable checkpoint: {reason}"
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_ckpt_path_last_without_a_run_starts_fresh(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", "--config", SMOKE, "--data.init_args.cache_dir", str(tmp_path / "cache"),
                    "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--ckpt_path", "last"])
    assert cli.trainer.global_step == 1 and (tmp_path / "runs" / "smoke" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("extra, message", [
    (lambda tmp: ["--data.init_args.cache_dir", str(tmp / "cache"), "--data.init_args.lengths", "[192, 8300]"],
     "data.init_args.lengths=[192, 8300]: 8300 tokens is longer than the context of model tiny:llama:2:49152; "
     "expected values <= 8192 (its max_position_embeddings)"),
    (lambda tmp: [*sft_file(tmp, "chat.jsonl", '{"prompt": "p", "response": "r"}\n' * 2), "--data.max_length",
                  "8300"],
     "data.init_args.max_length=8300: 8300 tokens is longer than the context of model tiny:llama:2:49152; "
     "expected values <= 8192 (its max_position_embeddings)"),
], ids=["synthetic_lengths", "sft_max_length"])
def test_sample_lengths_beyond_the_model_context_are_an_error_before_training(tmp_path, monkeypatch, extra, message):
    """The smoke model's context is 8192 tokens (max_position_embeddings): transformers would only warn."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMOKE, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
              *extra(tmp_path)])
    assert exit_info.value.code == "train.py: error: " + message
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # no data made, no step taken


def test_data_module_by_short_name_gets_the_model_tokenizer():
    cli = cli_main(["--model.model", "/models/qwen", "--data", "SFTDataModule", "--data.train_files", "[a.jsonl]",
                    "--trainer.logger", "false"], run=False)
    assert type(cli.datamodule) is SFTDataModule and cli.datamodule.tokenizer_path == "/models/qwen"


def run_train(cwd: Path, *args: str) -> None:
    """train.py fit of the smoke config as a command, from `cwd` (where it writes runs/)."""
    command = [sys.executable, str(ROOT / "train.py"), "fit", "--config", SMOKE,
               "--data.init_args.cache_dir", str(cwd.parent / "cache"), "--model.lr_scheduler.init_args.max_steps", "4",
               *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "sync_dist=True" not in result.stderr  # GenerationValidation's metrics are synced across ranks


@pytest.mark.slow
@pytest.mark.parametrize("accelerator, strategy", [
    ("cpu", "ddp"),
    pytest.param("gpu", "fsdp", marks=pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")),
])
def test_two_processes_by_command_line_resume_and_equal_one_process_on_the_doubled_batch(tmp_path, accelerator,
                                                                                       strategy):
    """`--trainer.devices 2 --trainer.strategy ddp|fsdp` as users run it (Lightning re-runs the command for rank 1;
    gloo on CPU): 2 + 2 steps with a resume, only rank 0 writing, and the weights of one process with batch 4 at step 2
    (before the resume) and step 4."""
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    common = ["--trainer.accelerator", accelerator]
    if strategy == "fsdp":  # FSDP draws fresh LoRA weights unlike one process: start both from the same saved ones
        (tmp_path / "init").mkdir()
        run_train(tmp_path / "init", *common, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0")
        common += ["--model.init_weights", str(tmp_path / "init" / "runs" / "smoke" / "checkpoints" / "last.ckpt")]
    parallel = [*common, "--trainer.devices", "2", "--trainer.strategy", strategy]
    run_train(two, *parallel, "--trainer.max_steps", "2")
    run_train(two, *parallel, "--trainer.max_steps", "4", "--ckpt_path", "last")
    run_train(one, *common, "--data.init_args.batch_size", "4", "--trainer.limit_val_batches", "0")

    runs = two / "runs" / "smoke"
    assert sorted(p.name for p in runs.iterdir()) == ["checkpoints", "version_0", "version_1"]  # one per command
    assert sorted(p.name for p in (runs / "checkpoints").iterdir()) == [
        "epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"]
    for name, step in (("epoch=0-step=2.ckpt", 2), ("last.ckpt", 4)):  # before the resume, then after it
        got = torch.load(runs / "checkpoints" / name, map_location="cpu", weights_only=True)
        want = torch.load(one / "runs" / "smoke" / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert got["global_step"] == want["global_step"] == step
        assert got["state_dict"].keys() == want["state_dict"].keys()
        # element-wise |diff| <= 1e-6 + 1e-4 |want|; on failure: where, by how much, and in how much of the tensor
        excess = {k: (got["state_dict"][k] - w).abs() / (1e-6 + 1e-4 * w.abs()) for k, w in want["state_dict"].items()}
        worst = max(excess, key=lambda k: excess[k].max().item())
        w, delta = want["state_dict"][worst], got["state_dict"][worst] - want["state_dict"][worst]
        assert excess[worst].max() <= 1, (
            f"step {step}, {worst}: max |diff| {delta.abs().max():.3e} (max |value| {w.abs().max():.3e}), over the "
            f"tolerance in {int((excess[worst] > 1).sum())} of {w.numel()} elements; relative norm of the difference "
            f"{delta.norm() / w.norm():.1e}")


def sft_file(tmp_path: Path, name: str, content: str) -> list[str]:
    (tmp_path / name).write_text(content)
    return ["--data", "SFTDataModule", "--data.train_files", f"[{tmp_path / name}]",
            "--data.cache_dir", str(tmp_path / "cache")]


@pytest.mark.parametrize("extra, message", [
    (lambda tmp: ["--model.swaa", "{window: 0}"],
     "swaa={'window': 0}: SWAAConfig.window=0: expected None (full attention) or an int >= 1"),
    (lambda tmp: sft_file(tmp, "bad.jsonl", '{"prompt": "p", "response": "r"}\n{"prompt": "p", "response"}\n'),
     "cannot read data file {tmp}/bad.jsonl: line 2: invalid JSON (Expecting ':' delimiter, column 27)"),
    (lambda tmp: sft_file(tmp, "empty.jsonl", ""), "data file {tmp}/empty.jsonl is empty"),
    (lambda tmp: ["--model.init_weights", str(tmp / "nope.ckpt")], "checkpoint {tmp}/nope.ckpt not found"),
    (lambda tmp: ["--model.model", "tiny:llama:0:49152"],
     "--model.model='tiny:llama:0:49152': need layers >= 1 and vocab >= 2"),
    (lambda tmp: ["--model.model", "tiny:llama:2:256"],
     "--model.model='tiny:llama:2:256': vocab 256 is smaller than the SmolLM2 tokenizer's 49152 tokens that text tasks "
     "use; give a vocab >= 49152"),
    (lambda tmp: ["--model.model", str(tmp / "model")],
     "--model.model {tmp}/model: expected a Hugging Face folder with config.json or a .gguf file"),
], ids=["bad_value", "malformed_jsonl", "empty_jsonl", "missing_checkpoint", "bad_tiny_spec", "tiny_vocab",
        "bad_model_path"])
def test_main_turns_user_errors_into_one_line(tmp_path, monkeypatch, extra, message):
    """What sys.exit prints (to stderr, exit status 1): one line naming the value, file and line, no traceback."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SMOKE, *extra(tmp_path)])
    assert exit_info.value.code == "train.py: error: " + message.replace("{tmp}", str(tmp_path))


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_other_subcommands_name_the_model_flag_too(tmp_path, monkeypatch, subcommand):
    """validate / test / predict check the model before data is made, as fit does."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", SMOKE, "--model.model", "tiny:llama:0:49152"])
    message = "--model.model='tiny:llama:0:49152': need layers >= 1 and vocab >= 2"
    assert exit_info.value.code == f"train.py: error: {message}"


@pytest.mark.slow
def test_ctrl_c_prints_what_was_saved_and_exits_130_then_the_run_resumes(tmp_path, monkeypatch):
    """SIGINT after the first checkpoint: one line naming last.ckpt and --ckpt_path last (not Lightning's notice and
    exit 1, nor a traceback); the command it names resumes from there."""
    args = ["fit", "--config", SMOKE, "--data.init_args.cache_dir", str(tmp_path / "cache"),
            "--model.lr_scheduler.init_args.max_steps", "4", "--trainer.max_steps", "100000",
            "--data.init_args.n_train", "400"]
    last = tmp_path / "runs" / "smoke" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, stderr=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, text=True,  # as a terminal's Ctrl-C finds it:
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=300)[1]
    assert process.returncode == 130, stderr[-4000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert re.fullmatch(rf"train\.py: interrupted at step \d+; last checkpoint {re.escape(str(last))}; to resume, "
                        r"run the same command with --ckpt_path last", stderr.strip().splitlines()[-1])

    step = torch.load(last, weights_only=True)["global_step"]
    monkeypatch.chdir(tmp_path)
    cli = cli_main([*args, "--trainer.max_steps", str(step + 1), "--ckpt_path", "last"])
    assert cli.trainer.global_step == step + 1
