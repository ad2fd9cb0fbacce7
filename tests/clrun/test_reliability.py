"""Crashes lose nothing: resume gives the uninterrupted result, writes are atomic, loads are safe."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from clcore.algorithms.base import NonFiniteLossError
from clcore.clrun import resume
from clcore.clrun.checkpoint import (
    CHECKPOINT_KEYS,
    CheckpointError,
    capture_rng_state,
    read_checkpoint,
    restore,
    restore_rng_state,
    save_checkpoint,
)
from clcore.clrun.task_loop import run_sequence, write_results
from clcore.metrics.results import ContinualResults
from clcore.utils import atomic
from tests.helpers import FailInTask, PoisonWeights, RunsCode

REPO = Path(__file__).resolve().parents[2]
CLRUN = str(Path(sys.executable).with_name("clrun"))
# Dropout draws from the global RNG every step: resuming is only exact if the RNG state is restored.
RUN = ["benchmark.num_tasks=4", "trainer.max_epochs=2", "backbone.dropout=0.2"]


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("task_*.ckpt"))}


# ---- resume --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_killed_mid_task_resumes_to_the_same_matrix(make_config, tmp_path):
    """SIGKILL in the middle of task 3 of a real ``clrun``; the same command again finishes the run."""
    out, marker = tmp_path / "killed", tmp_path / "inside_task_3"
    command = [
        CLRUN,
        *RUN,
        f"hydra.run.dir={out}",
        "trainer.enable_progress_bar=false",
        "callbacks=none",
        "logger=[]",
        "+callbacks.stall._target_=tests.helpers.StallInTask",
        "+callbacks.stall.task=3",
        f"+callbacks.stall.marker={marker}",
    ]
    # tests.helpers must import in the subprocess; one thread, like the in-process reference run.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")]),
        "OMP_NUM_THREADS": "1",
    }
    victim = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # The reference run, in this process, while the subprocess starts up.
        reference = run_sequence(make_config(*RUN, subdir="reference"))
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert victim.poll() is None, victim.stdout.read().decode()
            assert time.monotonic() < deadline, "the run never reached the middle of task 3"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert sorted(_mtimes(out / "checkpoints")) == ["task_1.ckpt", "task_2.ckpt"], (
        "killed after task 2, inside task 3"
    )
    finished_before_kill = _mtimes(out / "checkpoints")

    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from" in resumed.stdout + resumed.stderr
    checkpoints = _mtimes(out / "checkpoints")
    assert sorted(checkpoints) == ["task_1.ckpt", "task_2.ckpt", "task_3.ckpt", "task_4.ckpt"]
    assert {name: checkpoints[name] for name in finished_before_kill} == finished_before_kill, (
        "tasks 1-2 ran again"
    )
    assert (out / "results" / "acc_matrix.csv").read_text() == reference.acc_matrix_csv()


def _crash_then_resume(
    make_config, crash_task: int, *overrides: str
) -> tuple[ContinualResults, ContinualResults]:
    """(uninterrupted results, results of a run that crashed in ``crash_task`` and ran again in its folder)."""
    reference = run_sequence(make_config(*overrides, subdir="reference"))
    cfg = make_config(*overrides, subdir="crashed")
    with pytest.raises(RuntimeError, match=f"simulated crash in task {crash_task}"):
        run_sequence(cfg, extra_callbacks=[FailInTask(task=crash_task)])
    finished = [f"task_{t}.ckpt" for t in range(1, crash_task)]
    assert sorted(_mtimes(Path(cfg.paths.output_dir) / "checkpoints")) == finished
    return reference, run_sequence(cfg)


def test_crash_mid_task_resumes_exactly_with_algorithm_state(make_config):
    """In-process: a crash in task 2, then the same config again. ``RemembersTasks`` keeps state
    that only ``cl_state_dict`` saves; losing it would change what it records."""
    reference, resumed = _crash_then_resume(
        make_config,
        2,
        "benchmark.num_tasks=3",
        "backbone.dropout=0.2",
        "algorithm._target_=tests.helpers.RemembersTasks",
    )
    torch.testing.assert_close(resumed.acc_matrix, reference.acc_matrix, rtol=0, atol=0, equal_nan=True)
    assert resumed.extra["tasks_remembered"] == reference.extra["tasks_remembered"] == [1.0, 2.0, 3.0]


def test_hat_resumes_exactly_with_its_masks(make_config):
    """HAT keeps the masks of finished tasks as buffers; crashing in task 3 needs those of tasks 1-2."""
    reference, resumed = _crash_then_resume(
        make_config, 3, "benchmark.num_tasks=3", "algorithm=hat", "backbone=hat_mlp"
    )
    torch.testing.assert_close(resumed.acc_matrix, reference.acc_matrix, rtol=0, atol=0, equal_nan=True)
    assert resumed.extra["capacity"] == reference.extra["capacity"]


def test_crash_mid_task_resumes_exactly_with_zero_shot_evaluation(make_config):
    """The untrained model of ``eval.zero_shot`` grows heads from the global RNG: it is checkpointed too.

    The crash is in task 3: by then the untrained model has heads for tasks 1-2 to restore.
    """
    reference, resumed = _crash_then_resume(make_config, 3, "benchmark.num_tasks=3", "eval.zero_shot=true")
    for name in ("acc_matrix", "acc_before_training", "acc_untrained"):
        torch.testing.assert_close(
            getattr(resumed, name), getattr(reference, name), rtol=0, atol=0, equal_nan=True, msg=name
        )


def test_untrained_model_is_restored_from_the_checkpoint(make_config, tmp_path):
    import copy

    from clcore.clrun.construction import build

    cfg = make_config("benchmark.num_tasks=3")
    benchmark, algorithm = build(cfg)
    untrained = copy.deepcopy(algorithm)
    for task_id in range(2):  # what _zero_shot_eval does by task 2: heads drawn from the global RNG
        algorithm.setup_task(task_id, 10)
        untrained.setup_task(task_id, 10)
    results = ContinualResults(3)
    results.record_row(1, torch.tensor([0.5, 0.6, float("nan")]))
    path = save_checkpoint(tmp_path, 1, algorithm, results, resume.config_hash(cfg), untrained)

    _, fresh_algorithm = build(cfg)
    fresh_untrained = copy.deepcopy(fresh_algorithm)
    restored = restore(read_checkpoint(path), fresh_algorithm, fresh_untrained)
    assert restored.tasks_done == 2
    for saved, loaded in ((untrained, fresh_untrained), (algorithm, fresh_algorithm)):
        expected, actual = saved.state_dict(), loaded.state_dict()
        assert expected.keys() == actual.keys()
        assert all(torch.equal(v, actual[k]) for k, v in expected.items() if isinstance(v, torch.Tensor))


def test_finished_run_is_not_trained_again_and_resume_false_starts_over(make_config, monkeypatch):
    # default callbacks: their end-of-run hooks also run when nothing is left to train
    cfg = make_config(
        "benchmark.num_tasks=2", "trainer.limit_train_batches=2", "callbacks=default", "plots=true"
    )
    first = run_sequence(cfg)
    out = Path(cfg.paths.output_dir)
    import lightning

    def fit(*args, **kwargs):
        pytest.fail("a finished run trained again")

    with monkeypatch.context() as patch:
        patch.setattr(lightning.Trainer, "fit", fit)
        (out / "plots" / "acc_matrix.png").unlink()
        again = run_sequence(cfg)  # resume=auto: nothing left to train
    assert (out / "plots" / "acc_matrix.png").is_file()
    torch.testing.assert_close(again.acc_matrix, first.acc_matrix, rtol=0, atol=0, equal_nan=True)
    # resume=false in the same folder: the previous run's checkpoints and results are replaced,
    # also those of tasks the new run does not have.
    (out / "checkpoints" / "task_7.ckpt").write_bytes(b"from an older, longer run")
    run_sequence(make_config("benchmark.num_tasks=1", "trainer.limit_train_batches=2", "resume=false"))
    assert sorted(_mtimes(out / "checkpoints")) == ["task_1.ckpt"]
    assert (out / "results" / "acc_matrix.csv").read_text().count("\n") == 2  # header + task 1


def test_checkpoint_holds_everything_needed_and_loads_weights_only(make_config):
    cfg = make_config("benchmark.num_tasks=2", "trainer.limit_train_batches=2")
    results = run_sequence(cfg)
    path = Path(cfg.paths.output_dir) / "checkpoints" / "task_2.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    assert set(CHECKPOINT_KEYS) <= set(checkpoint)
    assert checkpoint["task_id"] == 1 and checkpoint["config_hash"] == resume.config_hash(cfg)
    assert checkpoint["state_dict"]["heads._extra_state"] == {"classes_per_task": [10, 10]}
    torch.testing.assert_close(
        ContinualResults.from_state_dict(checkpoint["results"]).acc_matrix, results.acc_matrix, equal_nan=True
    )
    assert checkpoint["rng"]["torch"].dtype == torch.uint8 and checkpoint["rng"]["numpy"]["keys"].shape == (
        624,
    )


def test_rng_state_round_trips():
    import random

    import numpy as np

    state = capture_rng_state()
    drawn = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(drawn[0], again[0]) and np.array_equal(drawn[1], again[1]) and drawn[2] == again[2]


# ---- nothing lost ----------------------------------------------------------------------------------
def test_crash_while_writing_results_keeps_the_previous_complete_files(tmp_path, monkeypatch):
    results = ContinualResults(3)
    results.record_row(0, torch.tensor([0.9, float("nan"), float("nan")]))
    write_results(results, tmp_path)
    before = {name: (tmp_path / "results" / name).read_text() for name in ("acc_matrix.csv", "summary.json")}

    results.record_row(1, torch.tensor([0.5, 0.8, float("nan")]))

    def crash(*args, **kwargs):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        write_results(results, tmp_path)
    monkeypatch.undo()
    after = {name: (tmp_path / "results" / name).read_text() for name in ("acc_matrix.csv", "summary.json")}
    assert after == before
    assert [p.name for p in (tmp_path / "results").iterdir() if p.name.endswith(".tmp")] == []


def test_crash_halfway_through_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "task_1.ckpt"
    atomic.torch_save_atomic(path, {"weights": torch.ones(1000)})
    real_save = torch.save

    def half_then_crash(obj, stream):
        real_save(obj, stream)
        stream.truncate(stream.tell() // 2)
        raise OSError("simulated crash halfway through the write")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match="halfway"):
        atomic.torch_save_atomic(path, {"weights": torch.zeros(1000)})
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.ones(1000))
    assert list(path.parent.glob("*.tmp")) == []


def test_nonfinite_loss_stops_the_task_and_keeps_the_last_good_checkpoint(make_config):
    cfg = make_config("benchmark.num_tasks=3", "trainer.max_epochs=3")
    out = Path(cfg.paths.output_dir)
    PoisonWeights.batches_seen.clear()
    with pytest.raises(
        NonFiniteLossError, match=r"task 2: the training loss became NaN or infinite"
    ) as stopped:
        run_sequence(cfg, extra_callbacks=[PoisonWeights(task=2, batch=2)])
    assert "optimizer.lr" in str(stopped.value)
    batches_per_epoch = PoisonWeights.batches_seen[1] // 3
    assert PoisonWeights.batches_seen[2] <= batches_per_epoch, "the diverged task kept training"
    rows = (out / "results" / "acc_matrix.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,")  # header + task 1, untouched
    checkpoint = read_checkpoint(out / "checkpoints" / "task_1.ckpt")
    assert all(
        torch.isfinite(t).all() for t in checkpoint["state_dict"].values() if isinstance(t, torch.Tensor)
    )
    assert not (out / "checkpoints" / "task_2.ckpt").exists()


@pytest.mark.parametrize(
    "algorithm", [[], ["algorithm=hat", "backbone=hat_mlp"]], ids=["finetuning", "hat_manual_optimisation"]
)
def test_diverging_learning_rate_is_stopped(make_config, algorithm):
    cfg = make_config("benchmark.num_tasks=2", "optimizer.lr=1e30", *algorithm)
    with pytest.raises(NonFiniteLossError, match="task 1"):
        run_sequence(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


# ---- safe loading ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("write", ["pickle", "torch.save"])
def test_malicious_checkpoint_is_refused_not_executed(tmp_path, write):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "checkpoints" / "task_1.ckpt"
    path.parent.mkdir()
    if write == "pickle":
        path.write_bytes(pickle.dumps(RunsCode(marker)))
    else:
        torch.save({"task_id": RunsCode(marker)}, path)
    pickle.loads(pickle.dumps(RunsCode(tmp_path / "control")))  # the payload does run when unpickled
    assert (tmp_path / "control").exists()
    with pytest.raises(CheckpointError, match="would execute code, so it was refused"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_curvature_cache_is_refused_not_executed(tmp_path):
    from clcore.algorithms.tak.fisher_cache import cache_file, load_or_compute_factors

    key = {"dataset": "digits", "task": 1}
    marker = tmp_path / "payload_ran"
    cache_file(tmp_path, key).write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(ValueError, match="KFAC cache file .* would execute code, so it was refused"):
        load_or_compute_factors(
            tmp_path, key, lambda: pytest.fail("recomputed instead of reporting the bad file")
        )
    assert not marker.exists()


def test_only_display_keys_may_change_between_a_run_and_its_continuation(make_config, tmp_path):
    from clcore.clrun.construction import build

    cfg = make_config("benchmark.num_tasks=2", quiet=False)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    benchmark, algorithm = build(cfg)
    algorithm.setup_task(0, benchmark.num_classes_of(0))
    saved = save_checkpoint(out, 0, algorithm, ContinualResults(2), resume.config_hash(cfg))

    same_run = make_config(
        "benchmark.num_tasks=2", "trainer.enable_progress_bar=false", "resume=true", quiet=False
    )
    assert resume.resume_plan(same_run) == (saved, [])
    other_run = make_config("benchmark.num_tasks=2", "optimizer.lr=0.01", quiet=False)
    checkpoint, problems = resume.resume_plan(other_run)
    assert checkpoint is None and "optimizer.lr: 0.001 in the folder, 0.01 now" in problems[0]


# ---- what a resume must not mix or leave behind ----------------------------------------------------
SPLIT_TINY = [
    "benchmark=split_digits",
    "benchmark.source=tiny6",
    "trainer.max_epochs=1",
    "backbone.hidden_dims=[16]",
]


def test_a_checkpoint_written_on_other_data_is_not_resumed_from(tiny_source, make_config):
    """Data replaced between a crash and the re-run: refused, naming both fingerprints, folder kept."""
    from clcore.benchmarks.sources import _load
    from clcore.config_rules import ConfigError

    cfg = make_config(*SPLIT_TINY, "benchmark.num_tasks=3")
    with pytest.raises(RuntimeError, match="simulated crash in task 2"):
        run_sequence(cfg, extra_callbacks=[FailInTask(task=2, batch=0)])
    folder = Path(cfg.paths.output_dir)
    kept = {p.name: p.read_bytes() for p in (folder / "checkpoints").iterdir()}

    tiny_source.load.per_class += 1  # the "same" data set, now with one more image per class
    _load.cache_clear()
    with pytest.raises(ConfigError, match=r"the data changed since .*task_1\.ckpt was written") as refused:
        run_sequence(cfg)
    assert "resume=false" in str(refused.value)
    assert {p.name: p.read_bytes() for p in (folder / "checkpoints").iterdir()} == kept

    tiny_source.load.per_class -= 1  # the original data back: the run continues
    _load.cache_clear()
    assert run_sequence(cfg).tasks_done == 3


def test_temporaries_of_a_killed_writer_are_removed_when_the_folder_is_next_used(make_config):
    cfg = make_config("benchmark.num_tasks=1")
    folder = Path(cfg.paths.output_dir)
    left = [
        folder / "checkpoints" / f".task_1.ckpt.{'a' * 16}.tmp",
        folder / "results" / f".summary.json.{'b' * 16}.tmp",
    ]
    mine = folder / "results" / "notes.tmp"  # not a name clcore's writers use: kept
    for path in [*left, mine]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    run_sequence(cfg)
    assert [path.exists() for path in left] == [False, False]
    assert mine.read_bytes() == b"half a file"


def test_a_run_whose_trainer_cannot_be_built_deletes_nothing_even_with_resume_false(make_config):
    """``resume=false`` replaces the previous run, but only once the new run is known to start."""
    from clcore.config_rules import ConfigError

    cfg = make_config("benchmark.num_tasks=2")
    run_sequence(cfg)
    folder = Path(cfg.paths.output_dir)
    before = {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    again = make_config(
        "benchmark.num_tasks=2", "resume=false", "trainer.accelerator=gpu", "+optimizer.betas=[0.5,2.0]"
    )
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: accelerator=gpu is not a fault here")
    with pytest.raises(ConfigError) as refused:
        run_sequence(again)
    assert "No supported gpu backend" in str(refused.value) and "beta parameter" in str(refused.value)
    assert {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} == before


def test_a_resumed_run_keeps_the_logs_and_curves_of_its_finished_tasks(make_config):
    """metrics.csv and learning_curves.csv after a crash in task 3 and a resume are those of a run
    that was never interrupted: the finished tasks' rows kept, the crashed task's partial rows gone."""
    import csv

    run = [
        "benchmark.num_tasks=3",
        "trainer.max_epochs=2",
        "backbone.dropout=0.2",
        "trainer.log_every_n_steps=2",
    ]
    logged = ["callbacks=default", "logger=csv", "trainer.enable_progress_bar=false"]
    reference = make_config(*run, *logged, quiet=False, subdir="reference")
    run_sequence(reference)
    crashed = make_config(*run, *logged, quiet=False, subdir="crashed")
    with pytest.raises(RuntimeError, match="simulated crash in task 3"):
        run_sequence(crashed, extra_callbacks=[FailInTask(task=3, batch=4)])
    run_sequence(crashed)

    def rows(cfg, name: str) -> list[dict]:
        with open(Path(cfg.paths.output_dir) / name, newline="") as stream:
            return list(csv.DictReader(stream))

    assert rows(crashed, "logs/metrics.csv") == rows(reference, "logs/metrics.csv")
    assert rows(crashed, "results/learning_curves.csv") == rows(reference, "results/learning_curves.csv")
    assert {row["task"] for row in rows(crashed, "results/learning_curves.csv")} == {"1", "2", "3"}
