"""Preemption of the real `train.py fit` (configs/smoke.yaml; 1 process, and 2 with DDP on gloo): SIGTERM saves
last.ckpt at the end of the step and exits 143, SIGKILL at any point leaves the previous complete checkpoint, and
`--ckpt_path last` ends with the weights and the per-step samples of an uninterrupted run.

Each test is a chain: run, kill at one point, resume and kill at the next, ..., resume to the end (one process start
per kill point). After every kill, last.ckpt must hold the uninterrupted run's weights of its step."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from preemption_hooks import read_samples, recorded_steps, trainable_state

from swaa.preemption import SaveOnSigterm

ROOT = Path(__file__).resolve().parent.parent
STEPS = 8  # 4 batches per epoch on one process, 2 on two: resumes cross epoch boundaries
LAST = Path("runs") / "smoke" / "checkpoints" / "last.ckpt"
SIGTERM_STATUS, SIGKILL_STATUS = 128 + signal.SIGTERM, -signal.SIGKILL

# (signal, ranks it is sent to, pause point, step paused at, step of last.ckpt after the kill); checkpoints are
# written after steps 2, 4, 6, 8 (step file, then last.ckpt), validation runs after steps 3 and 6
ONE_PROCESS = [
    ("SIGKILL", (0,), "validation", 3, 2),  # during validation: step 3 is lost
    ("SIGTERM", (0,), "validation", 3, 3),  # during validation: saved when it ends
    ("SIGKILL", (0,), "checkpoint_write", 4, 3),  # writing step 4's last.ckpt (its step file is complete)
    ("SIGKILL", (0,), "before_optimizer_step", 5, 4),  # mid-step: backward done, optimizer step not
    ("SIGTERM", (0,), "before_optimizer_step", 5, 5),  # mid-step: the step is finished and saved
    ("SIGKILL", (0,), "step_start", 7, 6),  # right after step 6's checkpoints (and validation)
]
TWO_PROCESSES = [
    ("SIGTERM", (0,), "before_optimizer_step", 3, 3),  # to rank 0 only (as Kubernetes sends it): both ranks stop
    ("SIGKILL", (0, 1), "checkpoint_write", 4, 3),  # rank 0 writing last.ckpt, rank 1 waiting for it
    ("SIGKILL", (0, 1), "before_optimizer_step", 5, 4),
]


def start(cwd: Path, devices: int, *extra: str, weights: bool = False, group: bool = False) -> subprocess.Popen:
    """train.py fit of the smoke config for STEPS steps from `cwd`, recording the samples (and `weights`) of every step
    into `cwd`; with `group`, as the leader of a process group of its own. In float64: float32 kernels round
    differently from one process to the next (~1e-7), which Adam amplifies on the near-zero LoRA B weights past the
    comparison's tolerance; a resume error is far larger. Runs on one intra-op thread: with two, about one resumed
    process in eight computed its first step's q/k gradients 1e-4 off (relative; the same values each time, never with
    one thread), which failed the comparison at random."""
    parallel = ["--trainer.devices", "2", "--trainer.strategy", "ddp"] if devices == 2 else []
    command = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs" / "smoke.yaml"),
               "--data.init_args.cache_dir", str(cwd.parent / "cache"),
               "--model.lr_scheduler.init_args.max_steps", str(STEPS), "--trainer.max_steps", str(STEPS),
               "--trainer.val_check_interval", "3", "--trainer.precision", "64-true", *parallel,
               "--trainer.callbacks+=preemption_hooks.RecordSamples", f"--trainer.callbacks.out={cwd}",
               f"--trainer.callbacks.weights={weights}", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "MKL_CBWR": "AUTO,STRICT",  # MKL's results otherwise depend on memory alignment: runs differed by ~1e-6
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=group)  # its own process group, for os.killpg


def finish(process: subprocess.Popen, status: int) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == status, output[-4000:]
    return output


def wait_for(paths: list[Path], process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not all(p.exists() for p in paths):
        assert process.poll() is None, process.communicate()[0][-4000:]
        assert time.monotonic() < deadline, f"{paths} never appeared"
        time.sleep(0.05)


def interrupted(cwd: Path, devices: int, name: str, ranks: tuple[int, ...], point: str, step: int,
                *extra: str) -> str:
    """Run until rank 0 pauses at `point` of `step`, send signal `name` to `ranks`, let the paused process go on;
    return its output once it has exited with the signal's status."""
    for f in ["go", "paused-rank0", *(f"pid-rank{r}" for r in range(devices))]:
        (cwd / f).unlink(missing_ok=True)
    process = start(cwd, devices, *extra, "--trainer.callbacks+=preemption_hooks.PauseAt",
                    f"--trainer.callbacks.out={cwd}", f"--trainer.callbacks.point={point}",
                    f"--trainer.callbacks.step={step}")
    wait_for([cwd / "paused-rank0", *(cwd / f"pid-rank{r}" for r in range(devices))], process)
    if point == "checkpoint_write":  # inside write_atomic: its temporary file exists, last.ckpt not yet replaced
        assert list((cwd / LAST.parent).glob(".last.ckpt.*.tmp"))
    for rank in ranks:
        os.kill(int((cwd / f"pid-rank{rank}").read_text()), getattr(signal, name))
    (cwd / "go").touch()
    return finish(process, SIGTERM_STATUS if name == "SIGTERM" else SIGKILL_STATUS)


def max_difference(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    assert got.keys() == want.keys()
    for name, w in want.items():
        torch.testing.assert_close(got[name], w, rtol=1e-5, atol=1e-6, msg=name)
    return max((got[k] - w).abs().max().item() for k, w in want.items())


@pytest.mark.slow
@pytest.mark.parametrize("devices, chain", [(1, ONE_PROCESS), (2, TWO_PROCESSES)], ids=["1process", "2processes"])
def test_kills_and_resumes_end_like_an_uninterrupted_run(devices, chain, tmp_path):
    reference, cwd = tmp_path / "uninterrupted", tmp_path / "interrupted"
    reference.mkdir(), cwd.mkdir()
    finish(start(reference, devices, weights=True), 0)
    want = {s: torch.load(reference / f"weights-step{s}.pt", weights_only=True) for s in range(1, STEPS + 1)}

    resume: list[str] = []
    previous = None  # the step of the last checkpoint, once a run was interrupted
    for name, ranks, point, step, saved_at in chain:
        output = interrupted(cwd, devices, name, ranks, point, step, *resume)
        if resume:
            assert f"at step {previous}" in output  # the resume message names the step
        if name == "SIGTERM":
            assert output.count("SIGTERM: saved") == 1 and f"at step {step}; exiting with status 143" in output
        got_step, got = trainable_state(cwd / LAST)
        assert got_step == saved_at, (name, point)
        assert all(t.dtype == torch.float64 for t in got.values())  # see start()
        print(f"{devices} process(es), {name} at {point} of step {step}: last.ckpt at step {saved_at}, "
              f"max |weight difference| {max_difference(got, want[saved_at]):.3e}")
        resume, previous = ["--ckpt_path", "last"], saved_at

    output = finish(start(cwd, devices, *resume), 0)
    assert f"at step {previous}" in output
    assert not list((cwd / LAST.parent).glob(".*.tmp"))  # the killed write's temporary file was removed
    step, got = trainable_state(cwd / LAST)
    assert step == STEPS
    print(f"{devices} process(es), after the last resume: step {step}, max |weight difference| "
          f"{max_difference(got, want[STEPS]):.3e}")
    samples, want_samples = read_samples(cwd), read_samples(reference)
    assert list(samples) == list(range(1, STEPS + 1)) and samples == want_samples  # no step skipped, same rows
    print(f"steps trained by the runs of the chain, in order: {recorded_steps(cwd)}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_signal_to_the_process_group_with_dataloader_workers(name, tmp_path):
    """SLURM and `timeout` send SIGTERM to the whole process group, and Ctrl-C SIGINT, DataLoader workers included: the
    main process still ends as it does alone (SIGTERM: the step saved, 143; SIGINT: the resume message, 130). A worker
    ended by the signal used to make it raise: mid-save on SIGTERM, a traceback on SIGINT."""
    process = start(tmp_path, 1, "--data.init_args.num_workers", "2", "--trainer.callbacks+=preemption_hooks.PauseAt",
                    f"--trainer.callbacks.out={tmp_path}", "--trainer.callbacks.point=before_optimizer_step",
                    "--trainer.callbacks.step=3", group=True)
    wait_for([tmp_path / "paused-rank0"], process)
    os.killpg(process.pid, getattr(signal, name))
    (tmp_path / "go").touch()
    output = finish(process, SIGTERM_STATUS if name == "SIGTERM" else 128 + signal.SIGINT)
    assert "Traceback" not in output, output[-4000:]
    if name == "SIGTERM":
        assert output.count("SIGTERM: saved") == 1 and "at step 3; exiting with status 143" in output
        assert trainable_state(tmp_path / LAST)[0] == 3
    else:
        assert "interrupted at step 2; last checkpoint" in output and "--ckpt_path last" in output


class _SigtermAtStep(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class _Line(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - batch).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_sigterm_during_a_step_with_a_scheduled_checkpoint_writes_it_too(tmp_path):
    """ModelCheckpoint runs after SaveOnSigterm at the end of a step: the step's own file is still written."""
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2, save_top_k=-1)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=8, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[SaveOnSigterm(), _SigtermAtStep(4), checkpoint])
    with pytest.raises(SystemExit) as exit_info:
        trainer.fit(_Line(), torch.utils.data.DataLoader(torch.ones(16, 1)))
    assert exit_info.value.code == SIGTERM_STATUS and trainer.global_step == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"]
    assert trainable_state(tmp_path / "last.ckpt")[0] == 4
