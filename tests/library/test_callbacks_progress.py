"""The progress display: what it says, that it costs nothing to stop, that logs stay plain text."""

import io
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning import Callback
from rich.console import Console

from clcore.callbacks import RichSummary, TaskProgressBar
from clcore.callbacks.progress import _task_list
from clcore.clrun.task_loop import run_sequence
from clcore.metrics.results import ContinualResults
from tests.conftest import QUIET, compose_config

CLRUN = str(Path(sys.executable).with_name("clrun"))
TINY = ["benchmark.num_tasks=3", "trainer.max_epochs=1"]


def terminal() -> Console:
    """A console that behaves as a colour terminal, writing into memory."""
    return Console(file=io.StringIO(), force_terminal=True, width=140, color_system="standard")


@pytest.fixture(scope="module")
def bar_on_and_off(tmp_path_factory):
    """Two interleaved pairs of the same 3-task run: redrawing bars on a terminal, and no bar.

    Interleaved, so that a slow spell of a shared machine hits both sides alike.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {"on": [], "off": []}
    try:
        for pair in range(2):
            for side in ("on", "off"):
                overrides = [*QUIET, *TINY, f"trainer.enable_progress_bar={side == 'on'}"]
                cfg = compose_config(overrides, tmp_path_factory.mktemp(f"{side}{pair}"))
                bar = [TaskProgressBar(console=terminal())] if side == "on" else []
                runs[side].append(run_sequence(cfg, extra_callbacks=bar))
    finally:
        torch.set_num_threads(threads)
    return runs


class Linger(Callback):
    """Stays a moment in every validation and test batch, so that a refresh draws each phase's bar."""

    def on_validation_batch_end(self, *args, **kwargs) -> None:
        time.sleep(0.05)

    def on_test_batch_end(self, *args, **kwargs) -> None:
        time.sleep(0.05)


def test_terminal_bars_name_task_epoch_phase_and_metrics(make_config):
    bar = TaskProgressBar(refresh_per_second=50, console=terminal())
    run_sequence(make_config(*TINY, "trainer.enable_progress_bar=true"), extra_callbacks=[bar, Linger()])
    drawn = bar.console.file.getvalue()
    assert "\x1b[" in drawn  # really drawn as a terminal display
    for text in (
        "Task 1/3 · epoch 1/1",
        "Task 3/3 · epoch 1/1",
        "Task 2/3 · validation",
        "Task 1/3 · testing task 1",
        "Task 3/3 · testing task 2",
        "Task 3/3 · testing task 3",
        "train/loss ",  # the task cut from train/loss/task_1
        "val/acc ",
    ):
        assert text in drawn, text
    assert "train/loss/task_1" not in drawn


def test_stopping_the_bars_costs_nothing_per_task(bar_on_and_off):
    # Each task stops the display twice (end of fit, end of test). Lightning's RichProgressBar at
    # refresh_rate 1 waited up to a second at each stop: about 2 s a task on these 0.1 s tasks.
    seconds = {
        side: [s for results in runs for s in results.extra["task_seconds"]]
        for side, runs in bar_on_and_off.items()
    }
    extra = statistics.median(seconds["on"]) - statistics.median(seconds["off"])
    assert extra < 0.3, seconds


def test_the_bars_do_not_change_the_experiment(bar_on_and_off):
    matrices = [results.acc_matrix for runs in bar_on_and_off.values() for results in runs]
    for matrix in matrices[1:]:
        torch.testing.assert_close(matrix, matrices[0], rtol=0, atol=0, equal_nan=True)


def test_piped_output_is_plain_lines(tmp_path):
    """Under SLURM or ``> log``: no escape codes, no carriage-return redraws, a line per epoch and test."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS")}
    command = [CLRUN, "benchmark.num_tasks=2", "trainer.max_epochs=2", "trainer.limit_train_batches=5"]
    command += ["logger=[]", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(command, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "\x1b[" not in output and "\r" not in output
    lines = output.splitlines()
    epochs = [line for line in lines if line.startswith("Task ") and " · epoch " in line]
    assert [line.split(" · 5 batches · ")[0] for line in epochs] == [
        "Task 1/2 · epoch 1/2",
        "Task 1/2 · epoch 2/2",
        "Task 2/2 · epoch 1/2",
        "Task 2/2 · epoch 2/2",
    ]
    assert all(" s · train/loss " in line and " · val/acc " in line for line in epochs), epochs
    tests = [line.split(" · ")[:2] for line in lines if " · tested " in line]
    assert tests == [["Task 1/2", "tested task 1"], ["Task 2/2", "tested tasks 1-2"]]
    assert "…" not in output  # nothing cut to fit 80 columns


def test_summary_in_a_log_file_keeps_the_whole_matrix(tmp_path, capsys):
    """rich squeezes a 12-task table into 80 columns when printing to a file ("74…"); not here."""
    results = ContinualResults(12)
    for task in range(12):
        results.record_row(task, torch.full((task + 1,), 0.745))
    trainer = SimpleNamespace(is_global_zero=True, default_root_dir=str(tmp_path))
    RichSummary().on_sequence_end(trainer, None, results)
    printed = capsys.readouterr().out
    assert "\x1b[" not in printed and "…" not in printed
    assert "task 12" in printed and printed.count(" 74.5 ") == 12 * 13 // 2 + 12  # cells, averages


@pytest.mark.parametrize(
    ("tasks", "text"),
    [([2], "task 3"), ([0, 1, 2], "tasks 1-3"), ([0, 2], "tasks 1, 3")],
)
def test_tested_tasks_are_counted_from_one(tasks, text):
    assert _task_list(tasks) == text
