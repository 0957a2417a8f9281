"""Preemption of the real `train.py fit` (configs/smoke.yaml, 1 process and 2 with DDP on gloo): SIGTERM saves last.ckpt
and exits 143, SIGKILL at any point leaves the previous complete checkpoint, and `--ckpt_path last` then ends with the
weights and the per-step samples of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from preemption_hooks import read_samples, recorded_steps, trainable_state

ROOT = Path(__file__).resolve().parent.parent
STEPS = 6  # 4 batches per epoch on one process, 2 on two: resumes cross epoch boundaries
LAST = Path("runs") / "smoke" / "checkpoints" / "last.ckpt"


def command(cwd: Path, devices: int, *extra: str) -> list[str]:
    """train.py fit of the smoke config for STEPS steps: checkpoints every 2 steps, validation after step 3 and 6."""
    parallel = ["--trainer.devices", "2", "--trainer.strategy", "ddp"] if devices == 2 else []
    return [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "smoke.yaml"),
            "--data.init_args.cache_dir", str(cwd.parent / "cache"), "--model.max_steps", str(STEPS),
            "--trainer.max_steps", str(STEPS), "--trainer.val_check_interval", "3", *parallel,
            "--trainer.callbacks+=preemption_hooks.RecordSamples", f"--trainer.callbacks.out={cwd}", *extra]


def start(cwd: Path, devices: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(command(cwd, devices, *extra), cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, status: int) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == status, output[-4000:]
    return output


@pytest.fixture(scope="module", params=[1, 2], ids=["1process", "2processes"])
def uninterrupted(request, tmp_path_factory):
    """An uninterrupted run of STEPS steps: its last.ckpt and the samples of each step."""
    cwd = tmp_path_factory.mktemp(f"uninterrupted{request.param}")
    finish(start(cwd, request.param), 0)
    return request.param, trainable_state(cwd / LAST), read_samples(cwd)


def wait_for(paths: list[Path], process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 240
    while not all(p.exists() for p in paths):
        assert process.poll() is None, process.communicate()[0][-4000:]
        assert time.monotonic() < deadline, f"{paths} never appeared"
        time.sleep(0.05)


def interrupt(cwd: Path, devices: int, point: str, step: int, sig: signal.Signals, ranks: tuple[int, ...]) -> str:
    """Run until rank 0 pauses at `point` of `step`, send `sig` to `ranks`, let the paused process go on; the output."""
    process = start(cwd, devices, "--trainer.callbacks+=preemption_hooks.PauseAt", f"--trainer.callbacks.out={cwd}",
                    f"--trainer.callbacks.point={point}", f"--trainer.callbacks.step={step}")
    wait_for([cwd / "paused-rank0", *(cwd / f"pid-rank{r}" for r in range(devices))], process)
    if point == "checkpoint_write":  # inside write_atomic: the temporary file is open, last.ckpt not yet replaced
        assert list((cwd / LAST.parent).glob(".last.ckpt.*.tmp"))
    for rank in ranks:
        os.kill(int((cwd / f"pid-rank{rank}").read_text()), sig)
    (cwd / "go").touch()
    return finish(process, 128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGKILL)


def check_resume(cwd: Path, uninterrupted, resumed_at: int) -> float:
    """Resume with --ckpt_path last and compare with the uninterrupted run; returns the max |weight difference|."""
    devices, (want_step, want), want_samples = uninterrupted
    assert trainable_state(cwd / LAST)[0] == resumed_at
    output = finish(start(cwd, devices, "--ckpt_path", "last"), 0)
    assert f"at step {resumed_at}" in output and "Restored all states" in output
    assert not list((cwd / LAST.parent).glob(".*.tmp"))  # a killed write's temporary file was removed
    step, got = trainable_state(cwd / LAST)
    assert step == want_step == STEPS and got.keys() == want.keys()
    samples = read_samples(cwd)  # every step trained on the same rows, none skipped or seen twice
    assert samples == want_samples and len(samples) == STEPS
    assert sorted(sum(samples.values(), [])) == sorted(sum(want_samples.values(), []))
    redone = recorded_steps(cwd)
    assert redone == sorted(redone) or redone.count(resumed_at + 1) == 2  # only the lost steps were trained again
    difference = max((got[k] - w).abs().max().item() for k, w in want.items())
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, rtol=1e-5, atol=1e-6, msg=name)
    print(f"max |weight difference| after resuming at step {resumed_at}: {difference:.3e}")
    return difference


# (point, step it pauses at, step of last.ckpt after the kill)
SIGKILL_POINTS = {
    "after_checkpoint": ("step_start", 5, 4),  # step 4 and its checkpoints done, step 5 not begun
    "mid_step": ("before_optimizer_step", 3, 2),  # backward of step 3 done, its optimizer step not
    "validation": ("validation", 3, 2),  # validation after step 3 (checkpoints at 2, 4)
    "checkpoint_write": ("checkpoint_write", 4, 2),  # writing step 4's last.ckpt (its step file already written)
}


@pytest.mark.parametrize("kill_point", SIGKILL_POINTS)
def test_sigkill_resumes_from_the_previous_checkpoint(kill_point, uninterrupted, tmp_path):
    devices = uninterrupted[0]
    if devices == 2 and kill_point in ("after_checkpoint", "validation"):
        pytest.skip("one process covers these points; two processes: mid_step and checkpoint_write")
    point, step, resumed_at = SIGKILL_POINTS[kill_point]
    interrupt(tmp_path, devices, point, step, signal.SIGKILL, ranks=tuple(range(devices)))
    check_resume(tmp_path, uninterrupted, resumed_at)


@pytest.mark.parametrize("point", ["before_optimizer_step", "validation"])
def test_sigterm_saves_the_step_and_exits_143(point, uninterrupted, tmp_path):
    """SIGTERM to rank 0 only (as Kubernetes sends it): every rank finishes step 3, last.ckpt holds step 3."""
    devices = uninterrupted[0]
    if devices == 2 and point == "validation":
        pytest.skip("one process covers SIGTERM during validation")
    output = interrupt(tmp_path, devices, point, 3, signal.SIGTERM, ranks=(0,))
    assert output.count("SIGTERM: saved") == 1 and "at step 3; exiting with status 143" in output
    check_resume(tmp_path, uninterrupted, resumed_at=3)
