"""Every training config under configs/ (recursively, SWAA presets excluded) parses and instantiates through the CLI."""

from pathlib import Path

import pytest
import yaml
from train import cli_main

from swaa import load_presets
from swaa.eval.grid import select_grid
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
    cli = cli_main(["--config", str(path), "--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
                    "--trainer.default_root_dir", str(tmp_path / "out")], run=False)
    name = yaml.safe_load(path.read_text())["trainer"]["logger"]["init_args"]["name"]  # no output folder hard-coded:
    assert Path(cli.trainer.checkpoint_callback.dirpath) == tmp_path / "out" / name / "checkpoints"
    assert Path(cli.trainer.logger.log_dir).parent == tmp_path / "out" / name
    assert isinstance(cli.model, SWAAFineTuner) and cli.model.model is None  # built later, in configure_model
    model = cli.model.hparams.model
    assert cli.datamodule.tokenizer_path == model  # linked
    assert cli.trainer.checkpoint_callback.save_last
    assert type(cli.trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"


def test_smoke_resumes_from_last_under_another_root_dir(tmp_path, monkeypatch):
    """--trainer.default_root_dir moves logs and checkpoints, and --ckpt_path last still finds the last checkpoint."""
    monkeypatch.chdir(tmp_path)
    args = ["fit", "--config", str(ROOT / "configs" / "smoke.yaml"), "--trainer.default_root_dir", "elsewhere",
            "--data.init_args.cache_dir", str(tmp_path / "cache"), "--model.lr_scheduler.init_args.max_steps", "3"]
    cli_main([*args, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"])
    cli = cli_main([*args, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0", "--ckpt_path", "last"])
    assert cli.trainer.global_step == 3  # resumed at step 2
    runs = tmp_path / "elsewhere" / "smoke"
    assert sorted(p.name for p in runs.iterdir()) == ["checkpoints", "version_0", "version_1"]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "swaa").glob("*.yaml")), ids=lambda p: p.name)
def test_swaa_files_load_for_the_embedded_model(path):
    """Every file in configs/swaa is a grid (evaluate.py --swaa; preset names from the committed selection) or a
    presets file (--presets) valid for SmolLM2's 30 layers."""
    data = yaml.safe_load(path.read_text())
    selected = ROOT / "configs" / "swaa" / "selected_smollm2_w1024.yaml"
    configs = select_grid(str(path), selected)[0] if "configs" in data else load_presets(path)
    assert configs and all(len(c.full_layer_indices(30)) < 30 for c in configs.values() if c.enabled)
