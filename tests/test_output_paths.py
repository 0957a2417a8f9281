"""Output paths are checked before any work: a file where a folder goes (or the reverse), or a file in the way."""

import pytest

import evaluate
import swaa.eval.frontier
import swaa.eval.report
import swaa.select
from swaa.export import export
from swaa.files import check_output_path


def test_check_output_path(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    check_output_path(None, "--out")
    check_output_path(tmp_path / "new" / "x.json", "--out")  # to be made
    check_output_path(tmp_path, "--out", folder=True)
    with pytest.raises(ValueError, match=r"--out .*afile: is a file; expected a folder path"):
        check_output_path(afile, "--out", folder=True)
    with pytest.raises(ValueError, match=r"--markdown .*: is a folder; expected a file path"):
        check_output_path(tmp_path, "--markdown")
    with pytest.raises(ValueError, match=r"--out .*afile/x/y.json: .*afile is a file, not a folder"):
        check_output_path(afile / "x" / "y.json", "--out")


def test_entry_points_check_their_output_before_the_work(tmp_path, monkeypatch, capsys):
    """evaluate.py failed after its first cell, swaa.select after every pass (leaving their files beside), export
    after loading."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setattr(evaluate, "run_grid", lambda *a: pytest.fail("evaluated before the output check"))
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--model", "tiny:llama:2:49152", "--swaa", "fa", "--out", str(afile)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"--out {afile}: is a file; expected a folder path")
    monkeypatch.setattr(swaa.select, "load_config", lambda *a: pytest.fail("loaded before the output check"))
    with pytest.raises(SystemExit) as exc:
        swaa.select.main(["--model", "tiny:llama:4:49152", "--window", "16", "--budget", "1", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"--out {tmp_path}: is a folder; expected a file path")
    with pytest.raises(ValueError, match="--out .*afile: is a file"):
        export(tmp_path / "missing.ckpt", afile)
    monkeypatch.setattr(swaa.eval.report, "load_records", lambda *a: pytest.fail("read before the output check"))
    monkeypatch.setattr(swaa.eval.frontier, "load_speed", lambda *a: pytest.fail("read before the output check"))
    for module, extra in ((swaa.eval.report, []), (swaa.eval.frontier, ["--speed", "bench.json"])):
        with pytest.raises(SystemExit):
            module.main([str(tmp_path), *extra, "--out", str(afile)])
        assert capsys.readouterr().err.splitlines()[-1].endswith(f"--out {afile}: is a file; expected a folder path")
