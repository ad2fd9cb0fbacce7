"""The loggers' view of a task sequence: one step that grows across tasks, metrics grouped by
quantity (TensorBoard: a chart per quantity, a curve per task), the accuracy matrix as a table and
the plots as images, and a resumed run that continues its CSV, TensorBoard and W&B records."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clcore.clrun.task_loop import run_sequence
from clcore.loggers.sequence_step import continue_logging_step, logging_step
from tests.clrun.test_researcher_experience import read_wandb_records

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CLRUN = str(Path(sys.executable).with_name("clrun"))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_lightnings_logging_counter_is_where_the_sequence_step_lives():
    """``_batches_that_stepped`` is private: this fails first if a Lightning release renames it."""
    from lightning import Trainer

    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    continue_logging_step(trainer, 41)
    assert logging_step(trainer) == 41
    # the counter Lightning saves in its own checkpoints to continue a fit's curves
    assert trainer.fit_loop.state_dict()["epoch_loop.state_dict"]["_batches_that_stepped"] == 41


def test_the_logging_step_grows_across_tasks_and_each_task_follows_the_last(make_config):
    cfg = make_config(
        "benchmark.num_tasks=3", "trainer.max_epochs=2", "logger=csv", "trainer.log_every_n_steps=5"
    )
    run_sequence(cfg)
    out = Path(cfg.paths.output_dir)
    rows = _rows(out / "logs" / "metrics.csv")
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps)  # written in step order: no task starts over at 0
    end_steps = [
        torch.load(out / "checkpoints" / f"task_{t}.ckpt", weights_only=True)["logging_step"]
        for t in (1, 2, 3)
    ]
    for task in (1, 2, 3):
        trained = [int(r["step"]) for r in rows if r.get(f"train/loss/task_{task}")]
        assert len(trained) >= 4
        start = end_steps[task - 2] if task > 1 else -1
        # every training point of task t lies after task t-1's results and up to its own
        assert start < min(trained) and max(trained) < end_steps[task - 1], task
        (summary,) = [
            r for r in rows if r.get(f"test/acc/task_{task}") and int(r["step"]) == end_steps[task - 1]
        ]
        assert summary["test/average_accuracy"]
    # epoch is each task's own epoch: 0, 1 within a task, in step order
    for task in (1, 2, 3):
        epochs = [int(r["epoch"]) for r in rows if r.get(f"train/loss/task_{task}")]
        assert epochs == sorted(epochs) and set(epochs) == {0, 1}


def test_tensorboard_and_wandb_get_the_matrix_as_a_table_and_the_plots_as_images(
    make_config, tmp_path, monkeypatch
):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home"))
    import wandb
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config(
        "benchmark.num_tasks=2",
        "trainer.max_epochs=1",
        "logger=[tensorboard,wandb]",
        "plots=true",
        "callbacks=default",
        "trainer.enable_progress_bar=false",
        quiet=False,
    )
    results = run_sequence(cfg)
    wandb.finish()
    out = Path(cfg.paths.output_dir)
    plots = sorted(p.stem for p in (out / "plots").glob("*.png"))
    assert "acc_matrix" in plots and "learning_curves" in plots

    board = EventAccumulator(
        str(out / "logs" / "tensorboard"), size_guidance={"images": 0, "tensors": 0}
    ).Reload()
    assert {f"plots/{name}" for name in plots} <= set(board.Tags()["images"])
    (table,) = [t for t in board.Tags()["tensors"] if t.startswith("test/acc_matrix")]
    text = board.Tensors(table)[-1].tensor_proto.string_val[0].decode()
    r21, r22 = (100 * float(v) for v in results.acc_matrix[1, :2])
    assert (
        "| after task | task 1 | task 2 |" in text
        and f"| 2 | {round(r21, 2):g} | {round(r22, 2):g} |" in text
    )

    (log_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    history = {}
    for record in read_wandb_records(log_file):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                history[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    assert history["test/acc_matrix/_type"] == "table-file" and history["test/acc_matrix/nrows"] == 2
    assert {f"plots/{name}/_type" for name in plots} <= set(history)


def _clrun(command: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([CLRUN, *command], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_a_run_stopped_in_task_3_and_resumed_continues_its_csv_tensorboard_and_wandb_records(tmp_path):
    """SIGTERM in the middle of task 3 (its first points already logged), then the same command:
    metrics.csv and every TensorBoard curve equal an uninterrupted run's, and W&B continues the same
    run id; starting over in the folder opens a new W&B run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")]),
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        **{
            name: str(tmp_path / "wandb_home")
            for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
        },
    }
    run = [
        "benchmark.num_tasks=3",
        "trainer.max_epochs=2",
        "backbone.dropout=0.2",
        "trainer.log_every_n_steps=2",
    ]
    run += ["logger=many", "callbacks=none", "trainer.enable_progress_bar=false"]

    def stalled(marker: Path) -> list[str]:
        return [
            "+callbacks.stall._target_=tests.helpers.StallInTask",
            "+callbacks.stall.task=3",
            "+callbacks.stall.batch=9",
            f"+callbacks.stall.marker={marker}",
        ]

    unarmed = tmp_path / "unarmed"
    unarmed.write_text("0\n")  # an existing marker: the reference never stalls
    reference = tmp_path / "reference"
    done = _clrun([*run, *stalled(unarmed), f"hydra.run.dir={reference}"], env)
    assert done.returncode == 0, done.stderr[-3000:]

    out, marker = tmp_path / "run", tmp_path / "marker"
    command = [*run, *stalled(marker), f"hydra.run.dir={out}"]
    victim = subprocess.Popen(
        [CLRUN, *command], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        while not (marker.exists() and marker.read_text().strip()):
            assert victim.poll() is None, victim.communicate()[0][-3000:]
        os.kill(int(marker.read_text()), signal.SIGTERM)
        victim.communicate(timeout=120)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode != 0
    interrupted = _rows(out / "logs" / "metrics.csv")
    assert any(r.get("train/loss/task_3") for r in interrupted), "task 3 had logged before the stop"
    first_id = (out / "wandb" / "clcore_run_id").read_text().strip()

    resumed = _clrun(command, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _rows(out / "logs" / "metrics.csv") == _rows(reference / "logs" / "metrics.csv")
    for task in (1, 2, 3):
        expected = EventAccumulator(str(reference / "logs" / "tensorboard" / f"task_{task}")).Reload()
        got = EventAccumulator(str(out / "logs" / "tensorboard" / f"task_{task}")).Reload()
        for tag in expected.Tags()["scalars"]:
            # purge_step hides what the stopped task had logged after the checkpoint. By step: the
            # event files of one folder are read in file-name order, which is not always the order
            # they were written in (names end in a counter compared as text: ".10" < ".9")
            assert sorted((e.step, e.value) for e in got.Scalars(tag)) == sorted(
                (e.step, e.value) for e in expected.Scalars(tag)
            ), (task, tag)
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{first_id}") for r in runs)  # one W&B run, continued

    again = _clrun([*command, "resume=false"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "wandb" / "clcore_run_id").read_text().strip() != first_id  # a new run, not appended
