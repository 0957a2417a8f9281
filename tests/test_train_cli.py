"""train.py: a 2-step CPU fit of configs/smoke.yaml, resume with --ckpt_path last, and CLI errors."""

from pathlib import Path

import pytest
import torch
from train import cli_main

from swaa.data import SFTDataModule

SMOKE = str(Path(__file__).resolve().parent.parent / "configs" / "smoke.yaml")


def test_smoke_fit_then_resume_from_last(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", SMOKE, "--data.init_args.cache_dir", str(tmp_path / "cache"), "--model.max_steps", "4"]
    cli = cli_main([*args, "--trainer.max_steps", "2"])
    ckpt_dir = tmp_path / "runs" / "smoke" / "checkpoints"
    assert cli.trainer.global_step == 2 and (ckpt_dir / "last.ckpt").is_file()
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and {"val/loss", "val/loss_fa", "val/acc"} <= set(metrics)
    version = tmp_path / "runs" / "smoke" / "version_0"
    assert (version / "config.yaml").is_file() and list(version.glob("events.out.tfevents.*"))
    first = torch.load(ckpt_dir / "last.ckpt", weights_only=True)["state_dict"]

    cli = cli_main([*args, "--trainer.max_steps", "3", "--ckpt_path", "last"])  # as if stopped at step 2 of 4
    assert cli.trainer.global_step == 3
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
    (["--data.init_args.tasks", "[no_such_task]"], "tasks=.*no_such_task.*known tasks"),
    (["--model.swaa", "nope"], "swaa='nope': unknown preset"),
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


def test_data_module_by_short_name_gets_the_model_tokenizer():
    cli = cli_main(["--model.model", "/models/qwen", "--data", "SFTDataModule", "--data.train_files", "[a.jsonl]",
                    "--trainer.logger", "false"], run=False)
    assert type(cli.datamodule) is SFTDataModule and cli.datamodule.tokenizer_path == "/models/qwen"
