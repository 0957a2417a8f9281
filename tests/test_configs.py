"""Every training config under configs/ (recursively, SWAA presets excluded) parses and instantiates through the CLI."""

from pathlib import Path

import pytest
import yaml
from train import cli_main

from swaa.lit import SWAAFineTuner

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if (ROOT / "configs" / "swaa") not in p.parents)


def test_configs_found():
    assert {p.name for p in CONFIGS} >= {"smoke.yaml", "smollm2_cpu.yaml", "smollm2_gpu.yaml", "qwen3_4b.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_parses_and_instantiates(path, tmp_path, monkeypatch, capsys):
    assert f"python train.py fit --config {path.relative_to(ROOT)}" in path.read_text()  # header gives the command
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["model"] == yaml.safe_load(path.read_text())["model"]["model"]
    monkeypatch.chdir(tmp_path)  # CPU overrides: the GPU configs must still build every object here
    cli = cli_main(["--config", str(path), "--trainer.accelerator", "cpu", "--trainer.precision", "32-true"],
                   run=False)
    assert isinstance(cli.model, SWAAFineTuner) and cli.model.model is None  # built later, in configure_model
    model = cli.model.hparams.model
    assert cli.datamodule.tokenizer_path == model  # linked
    assert cli.trainer.checkpoint_callback.save_last
    assert type(cli.trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"
