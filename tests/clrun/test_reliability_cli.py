"""Reliability through the real ``clrun``: stop signals, one run per folder, refusals that touch nothing.

Each test launches ``clrun`` as a user or a scheduler does and checks what they see: the exit
status, the one message, and the output folder (intact, resumable, or never created).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clcore.clrun.task_loop import run_sequence

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CLRUN = str(Path(sys.executable).with_name("clrun"))
# tests.helpers must import in the subprocess; one thread, like the in-process reference runs.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")]), "OMP_NUM_THREADS": "1"}
ENV.pop("HYDRA_FULL_ERROR", None)
RUN = ["benchmark.num_tasks=4", "trainer.max_epochs=2", "backbone.dropout=0.2"]
QUIET = ["trainer.enable_progress_bar=false", "callbacks=none", "logger=[]"]


def _stalled(marker: Path, task: int) -> list[str]:
    """Overrides that make the run sleep in the middle of ``task`` until signalled (tests.helpers)."""
    return [
        "+callbacks.stall._target_=tests.helpers.StallInTask",
        f"+callbacks.stall.task={task}",
        f"+callbacks.stall.marker={marker}",
    ]


def _wait_for(marker: Path, process: subprocess.Popen, seconds: float = 240) -> int:
    """The pid written by ``StallInTask`` once the run is inside its task."""
    deadline = time.monotonic() + seconds
    while not (marker.exists() and marker.read_text().strip()):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the run never reached the stalled task"
        time.sleep(0.05)
    return int(marker.read_text())


def _clrun(*overrides: str, multirun: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [CLRUN, *(["-m"] if multirun else []), *overrides]
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with the hash of its bytes (and its mode)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        + oct(path.stat().st_mode)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# ---- a stop signal is a failure that says how to continue ------------------------------------------
@pytest.mark.parametrize(
    ("signum", "task", "saved"),
    [(signal.SIGTERM, 3, 2), (signal.SIGHUP, 1, 0)],
    ids=["SIGTERM-in-task-3", "SIGHUP-in-task-1"],
)
def test_stop_signal_exits_nonzero_with_the_marker_and_the_same_command_continues(
    make_config, tmp_path, signum, task, saved
):
    out, marker = tmp_path / "run", tmp_path / "inside"
    command = [*RUN, *QUIET, f"hydra.run.dir={out}", *_stalled(marker, task)]
    victim = subprocess.Popen(
        [CLRUN, *command], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        reference = run_sequence(make_config(*RUN, subdir="reference"))
        _wait_for(marker, victim)
        victim.send_signal(signum)
        output, _ = victim.communicate(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode != 0, output
    name = signal.Signals(signum).name
    said = f"after task {saved} of 4" if saved else "before any task finished"
    assert f"stopped by {name} {said}" in output
    assert f"hydra.run.dir={out}" in output
    assert "Traceback" not in output
    assert f"stopped by {name}" in (out / "results" / "FAILED").read_text()
    assert sorted(p.name for p in (out / "checkpoints").glob("*.ckpt")) == [
        f"task_{t}.ckpt" for t in range(1, saved + 1)
    ]

    resumed = _clrun(*command)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (out / "results" / "acc_matrix.csv").read_text() == reference.acc_matrix_csv()
    assert not (out / "results" / "FAILED").exists(), "the marker goes once the run finished"


def test_sigterm_stops_a_sweep_nonzero_and_the_same_sweep_continues(tmp_path):
    """``-m seed=1,2``: SIGTERM in job 0 stops the sweep (job 1 is not run) with a non-zero exit;
    the same command with the same sweep folder finishes both jobs and writes the aggregate."""
    sweep, marker = tmp_path / "sweep", tmp_path / "inside"
    command = [
        CLRUN, "-m", "seed=1,2", *RUN[:1], "trainer.max_epochs=1", *QUIET,
        f"hydra.sweep.dir={sweep}", *_stalled(marker, 2),
    ]  # fmt: skip
    victim = subprocess.Popen(
        command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for(marker, victim)
        victim.send_signal(signal.SIGTERM)
        output, _ = victim.communicate(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode != 0, output
    assert "stopped by SIGTERM after task 1 of 4" in output
    assert "not started" in (sweep / "1" / "results" / "FAILED").read_text()
    assert not (sweep / "1" / "results" / "acc_matrix.csv").exists(), "job 1 never ran"

    again = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    for job in ("0", "1"):
        assert not (sweep / job / "results" / "FAILED").exists()
        assert (sweep / job / "results" / "summary.json").is_file()
    assert "completed" in (sweep / "aggregate.json").read_text()


def test_submitit_job_stopped_by_sigterm_is_failed_and_resumable_and_a_timeout_requeues(
    make_config, tmp_path
):
    """The SLURM flow, locally (``hydra/launcher=submitit_local``): SIGTERM to the job is a failure
    that the same command resumes; submitit's timeout signal (SIGUSR2) requeues the job, which
    continues by itself. Both end with the matrix of an uninterrupted run."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    reference = run_sequence(make_config(*RUN, subdir="reference"))

    def launch(sweep: Path, marker: Path) -> list[str]:
        return [
            CLRUN, "-m", "hydra/launcher=submitit_local",
            *RUN, *QUIET, f"hydra.sweep.dir={sweep}", *_stalled(marker, 3),
        ]  # fmt: skip

    for signum, finishes_by_itself in ((signal.SIGTERM, False), (signal.SIGUSR2, True)):
        sweep, marker = tmp_path / signum.name, tmp_path / f"inside_{signum.name}"
        command = launch(sweep, marker)
        launcher = subprocess.Popen(
            command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            job_pid = _wait_for(marker, launcher)
            assert job_pid != launcher.pid, "submitit runs the job in a process of its own"
            os.kill(job_pid, signum)
            output, _ = launcher.communicate(timeout=240)
        finally:
            if launcher.poll() is None:
                launcher.kill()
        job = sweep / "0"
        if finishes_by_itself:
            assert launcher.returncode == 0, output
        else:
            assert launcher.returncode != 0, output
            assert "stopped by SIGTERM after task 2 of 4" in output
            assert "stopped by SIGTERM" in (job / "results" / "FAILED").read_text()
            again = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
            assert again.returncode == 0, again.stdout + again.stderr
        assert (job / "results" / "acc_matrix.csv").read_text() == reference.acc_matrix_csv()
        assert not (job / "results" / "FAILED").exists()


# ---- one run per folder --------------------------------------------------------------------------
def test_second_run_in_a_busy_folder_is_refused_naming_the_holder_and_a_killed_holder_frees_it(tmp_path):
    # the holder is inside its first task: its log file is still empty, and must survive the refusals
    out, marker = tmp_path / "run", tmp_path / "inside"
    first = [*RUN, *QUIET, f"hydra.run.dir={out}", *_stalled(marker, 1)]
    holder = subprocess.Popen(
        [CLRUN, *first], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        pid = _wait_for(marker, holder)
        before = _tree(out)
        assert "cli.log" in before
        # the same command, and another experiment told to start over there: both refused at once
        for second in (first, [*first, "resume=false", "optimizer.lr=0.01"]):
            refused = _clrun(*second)
            assert refused.returncode != 0
            assert f"is in use by a run that is still going (pid {pid} on" in refused.stderr
            assert "Traceback" not in refused.stderr
            assert _tree(out) == before, "a refused run changed the folder"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    # the kernel released the lock with its process: the same command runs to the end
    again = _clrun(*first)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (out / "results" / "summary.json").is_file()


# ---- refusals: every problem at once, no traceback, nothing touched -------------------------------
EVERY_KIND = [
    # (override, what the message must say)
    ("algorithm.lr_scheduler_monitor=val/accuracy", "is never logged"),
    ("lr_scheduler=plateau", "lr_scheduler_monitor"),
    ("+optimizer.eps=-1", "Invalid epsilon value"),
    ("+trainer.max_epoch=1", "did you mean trainer.max_epochs?"),
    ("+trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0"),
    (f"trainer.devices={(os.cpu_count() or 1) + 1}", "on CPU each device is a process"),
    ("save_checkpoints=flase", "save_checkpoints='flase'"),
    ("backbone.hidden_dims=[-5]", "hidden_dims"),
    ("benchmark.val_fraction=0", "benchmark.val_fraction=0"),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    done = _clrun("benchmark.num_tasks=2", *QUIET, f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("where", ["a finished run's folder", "a new folder"])
def test_a_refused_run_lists_every_problem_without_a_traceback_and_touches_nothing(
    finished_run, tmp_path, where
):
    out = finished_run if where == "a finished run's folder" else tmp_path / "new" / "run"
    before = _tree(out) if out.exists() else None
    refused = _clrun(*[override for override, _ in EVERY_KIND], f"hydra.run.dir={out}")
    assert refused.returncode == 1
    for override, said in EVERY_KIND:
        assert said in refused.stderr, f"{override}: {refused.stderr}"
    assert "Traceback" not in refused.stderr
    if before is None:
        assert not out.exists(), "a refused run left a folder behind"
    else:
        assert _tree(out) == before, (
            "a refused re-run changed the finished run's folder (.hydra, FAILED, ...)"
        )


def test_a_refused_job_of_a_sweep_marks_nothing_failed_in_its_finished_folder(tmp_path):
    sweep = tmp_path / "sweep"
    done = _clrun("seed=1", "benchmark.num_tasks=2", *QUIET, f"hydra.sweep.dir={sweep}", multirun=True)
    assert done.returncode == 0, done.stderr
    before = _tree(sweep / "0")
    refused = _clrun(
        "seed=1",
        "benchmark.num_tasks=2",
        *QUIET,
        f"hydra.sweep.dir={sweep}",
        "optimizer.lr=-1",
        multirun=True,
    )
    assert refused.returncode != 0 and "optimizer.lr=-1" in refused.stderr
    assert _tree(sweep / "0") == before


def test_full_error_shows_the_traceback_when_asked(tmp_path):
    shown = subprocess.run(
        [CLRUN, "optimizer.lr=-1", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, env={**ENV, "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert shown.returncode != 0
    assert "Traceback" in shown.stderr and "optimizer.lr=-1" in shown.stderr


# ---- files planted in a run's folder --------------------------------------------------------------
def _plant_fifo(checkpoint: Path) -> None:
    checkpoint.unlink()
    os.mkfifo(checkpoint)


def _plant_pickle(checkpoint: Path) -> None:
    import pickle

    from tests.helpers import RunsCode

    checkpoint.write_bytes(pickle.dumps({"state_dict": RunsCode(checkpoint.parent.parent / "payload_ran")}))


@pytest.mark.parametrize(
    ("plant", "said"),
    [(_plant_fifo, "is a FIFO (named pipe), not a regular file"), (_plant_pickle, "would execute code")],
    ids=["fifo", "malicious-pickle"],
)
def test_a_file_planted_as_the_last_checkpoint_is_refused_quickly_unread_and_kept(
    finished_run, tmp_path, plant, said
):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    plant(out / "checkpoints" / "task_2.ckpt")
    before = _tree(out)
    started = time.monotonic()
    refused = _clrun("benchmark.num_tasks=2", *QUIET, f"hydra.run.dir={out}", timeout=120)
    assert refused.returncode == 1 and said in refused.stderr, refused.stderr
    assert "weights_only=False" not in refused.stderr and "Traceback" not in refused.stderr
    assert time.monotonic() - started < 60, "start-up hung on the planted file"
    assert not (out / "payload_ran").exists()
    assert _tree(out) == before


# ---- replay: the memory and its generator survive a SIGKILL ----------------------------------------
@pytest.mark.parametrize("algorithm", ["er", "derpp"])
def test_replay_killed_mid_sequence_resumes_to_the_same_matrix(make_config, tmp_path, algorithm):
    """SIGKILL (no handler runs) in the middle of task 3 of Split Digits, class-incremental; the same
    command then continues from task 2's checkpoint, whose memory buffers and generator state give
    the same replay draws as an uninterrupted run: the same accuracy matrix, to the last digit."""
    run = ["benchmark=split_digits", "paradigm=cil", "benchmark.num_tasks=4", "trainer.max_epochs=2"]
    run += [f"algorithm={algorithm}", "algorithm.memory_size=100"]
    out, marker = tmp_path / "run", tmp_path / "inside"
    command = [*run, *QUIET, f"hydra.run.dir={out}", *_stalled(marker, 3)]
    victim = subprocess.Popen(
        [CLRUN, *command], cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        reference = run_sequence(make_config(*run, subdir="reference"))
        os.kill(_wait_for(marker, victim), signal.SIGKILL)
        victim.communicate(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (out / "checkpoints").glob("*.ckpt")) == ["task_1.ckpt", "task_2.ckpt"]
    resumed = _clrun(*command)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (out / "results" / "acc_matrix.csv").read_text() == reference.acc_matrix_csv()
