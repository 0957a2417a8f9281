"""Every command-line entry point prints its help: argparse formats each help string only then."""

import importlib

import pytest

MODULES = ["evaluate", "swaa.export", "swaa.data.distill", "swaa.select", "swaa.eval.frontier", "swaa.eval.report",
           "swaa.eval.compare"]


@pytest.mark.parametrize("module", MODULES)
def test_help_prints_and_exits_cleanly(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
