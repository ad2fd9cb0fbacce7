"""What a researcher sees: loggers, plots, progress, Captum maps, sweeps, DDP, the docs."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from clcore.callbacks.attributions import Attributions, _TaskForward
from clcore.clrun.construction import build
from clcore.clrun.task_loop import run_sequence

pytestmark = pytest.mark.slow
CLRUN = str(Path(sys.executable).with_name("clrun"))
REPO = Path(__file__).resolve().parents[2]
TINY = ["benchmark.num_tasks=2", "trainer.max_epochs=1"]
# what every logger must receive: the quantity, then the task (1-based)
EXPECTED_KEYS = {
    "train/loss/task_1",
    "train/loss/task_2",
    "val/loss/task_1",
    "val/acc/task_2",
    "test/acc/task_1",
    "test/acc/task_2",
    "test/average_accuracy",
    "test/bwt",
}
# TensorBoard: each task's metrics in a run folder of the task, under the quantity's name
EXPECTED_PER_TASK_TAGS = {"train/loss", "val/loss", "val/acc", "test/acc"}


def subprocess_env(home: Path, **extra):
    wandb_home = {
        name: str(home / "wandb_home") for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
    }
    return {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1", **wandb_home, **extra}


def read_wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file: wandb's LevelDB-style log (32 KiB blocks, 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb transaction log"
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # the rest of a block is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_csv_tensorboard_and_wandb_get_task_structured_metrics(make_config, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the config's default must be offline
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home"))
    import wandb

    results = run_sequence(
        make_config(*TINY, "logger=many", "+callbacks.hp._target_=clcore.callbacks.LogHyperparameters")
    )
    wandb.finish()  # what clrun's JobOutcome hook does at the end of a job
    out = tmp_path / "run"
    final = results.summary()

    with open(out / "logs" / "metrics.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert EXPECTED_KEYS <= set(rows[0]), EXPECTED_KEYS - set(rows[0])
    assert "val/loss" not in rows[0]  # the monitor's name stays out of the loggers
    assert not any(name.startswith("acc_matrix") for name in rows[0])  # a table, not T(T+1)/2 scalars
    # the last task's summary reached the file although its Trainer had finished
    (last,) = [r for r in rows if r["test/acc/task_2"]]
    assert float(last["test/average_accuracy"]) == pytest.approx(final["average_accuracy"])
    assert float(last["test/bwt"]) == pytest.approx(final["bwt"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = out / "logs" / "tensorboard"
    events = EventAccumulator(str(board)).Reload()
    assert events.Scalars("test/average_accuracy")[-1].value == pytest.approx(final["average_accuracy"])
    for task in (1, 2):
        tags = set(EventAccumulator(str(board / f"task_{task}")).Reload().Tags()["scalars"])
        assert EXPECTED_PER_TASK_TAGS <= tags, (task, EXPECTED_PER_TASK_TAGS - tags)

    (run_dir,) = (out / "wandb").glob("offline-run-*")
    (log_file,) = run_dir.glob("run-*.wandb")
    history = {}
    for record in read_wandb_records(log_file):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                history[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    assert EXPECTED_KEYS <= set(history), EXPECTED_KEYS - set(history)
    assert history["test/average_accuracy"] == pytest.approx(final["average_accuracy"])
    # the run's config, for filtering runs in the W&B interface (and in TensorBoard / hparams.yaml)
    config = {}
    for record in read_wandb_records(log_file):
        if record.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    assert config["benchmark"]["num_tasks"] == 2 and config["seed"] == 1
    assert "num_tasks: 2" in (out / "logs" / "hparams.yaml").read_text()


def test_default_callbacks_show_tasks_and_draw_learning_curves(make_config, tmp_path, capsys):
    cfg = make_config(
        *TINY,
        "callbacks=default",
        "logger=csv",
        "trainer.enable_progress_bar=true",
        "plots=true",
        quiet=False,
    )
    run_sequence(cfg)
    out = tmp_path / "run"
    printed = capsys.readouterr().out
    # captured output is no terminal: the bar writes one plain line per epoch and per test
    for text in (
        "Task 1/2 · epoch 1/1 · ",
        "Task 2/2 · epoch 1/1 · ",
        "Task 2/2 · tested tasks 1-2 · ",
        "average accuracy",
        "avg",
    ):
        assert text in printed, text
    assert f"results in {out.resolve()}" in printed

    with open(out / "results" / "learning_curves.csv") as stream:
        curves = list(csv.DictReader(stream))
    with open(out / "logs" / "metrics.csv") as stream:
        logged = list(csv.DictReader(stream))
    for task in (1, 2):
        key = f"train/loss/task_{task}"
        from_logger = [(int(r["step"]), float(r[key])) for r in logged if r.get(key)]
        from_curves = [
            (int(r["sequence_step"]), float(r["value"]))
            for r in curves
            if r["task"] == str(task) and r["metric"] == "train/loss"
        ]
        # the steps and values the loggers wrote, plus the task's first step (where the curve starts)
        curve = dict(from_curves)
        first = min(curve)
        assert len(from_logger) > 2 and set(curve) == {first} | {step for step, _ in from_logger}, task
        assert [curve[step] for step, _ in from_logger] == pytest.approx([v for _, v in from_logger]), task
        assert {r["metric"] for r in curves if r["task"] == str(task)} >= {
            "train/loss",
            "val/loss",
            "val/acc",
        }
    task_1_end = max(int(r["sequence_step"]) for r in curves if r["task"] == "1")
    assert min(int(r["sequence_step"]) for r in curves if r["task"] == "2") > task_1_end  # side by side
    for name in ("learning_curves.png", "acc_matrix.png", "average_accuracy.png"):
        assert (out / "plots" / name).stat().st_size > 10_000, name


def test_attribution_maps_are_what_captum_method_promises(make_config):
    """Integrated gradients is complete: the maps sum to logit(x) - logit(black image) of the true class."""
    benchmark, algorithm = build(make_config("benchmark.num_tasks=2"))
    algorithm.setup_task(0, benchmark.num_classes_of(0))
    split = benchmark.task_split("test", 0)
    images, labels = split.images[:4], split.labels[:4]
    callback = Attributions(method="IntegratedGradients", attribute_kwargs={"n_steps": 200})
    maps = callback.attribute(algorithm, benchmark, images, labels, task_id=0)
    assert maps.shape == images.shape and maps.dtype == torch.float32
    forward = _TaskForward(algorithm.eval(), benchmark, 0)
    pixels = images.float() / 255
    with torch.no_grad():
        gap = forward(pixels).gather(1, labels[:, None]) - forward(torch.zeros_like(pixels)).gather(
            1, labels[:, None]
        )
    torch.testing.assert_close(maps.flatten(1).sum(1), gap.squeeze(1), rtol=0.02, atol=0.02)

    saliency = Attributions(method="Saliency").attribute(algorithm, benchmark, images, labels, task_id=0)
    pixels.requires_grad_(True)
    forward(pixels).gather(1, labels[:, None]).sum().backward()
    torch.testing.assert_close(saliency, pixels.grad.abs())


def test_attributions_callback_writes_maps_after_every_task(make_config, tmp_path):
    cfg = make_config(
        *TINY,
        "callbacks=attributions",
        "callbacks.attributions.num_images=3",
        "+callbacks.attributions.attribute_kwargs.n_steps=8",  # a key the config leaves open: +
    )
    run_sequence(cfg)
    folder = tmp_path / "run" / "attributions"
    shapes = {
        path.relative_to(folder).as_posix(): tuple(torch.load(path, weights_only=True).shape)
        for path in folder.glob("task_*/*.pt")
    }
    assert shapes == {
        "task_1/inputs.pt": (3, 1, 8, 8),
        "task_1/labels.pt": (3,),
        "task_1/after_task_1.pt": (3, 1, 8, 8),
        "task_1/after_task_2.pt": (3, 1, 8, 8),
        "task_2/inputs.pt": (3, 1, 8, 8),
        "task_2/labels.pt": (3,),
        "task_2/after_task_2.pt": (3, 1, 8, 8),
    }
    before = torch.load(folder / "task_1" / "after_task_1.pt", weights_only=True)
    after = torch.load(folder / "task_1" / "after_task_2.pt", weights_only=True)
    assert not torch.allclose(before, after)  # training task 2 changed what task 1's images light up
    assert (folder / "task_1.png").is_file() and (folder / "task_2.png").is_file()


def test_researcher_callback_from_the_command_line_reads_results(make_config, tmp_path):
    # the docs' example callback, added purely by an override, as a researcher would
    cfg = make_config("benchmark.num_tasks=3", "+callbacks.forgetting._target_=tests.helpers.ForgettingLog")
    results = run_sequence(cfg)
    lines = [
        json.loads(line) for line in (tmp_path / "run" / "forgetting_log.jsonl").read_text().splitlines()
    ]
    assert [line["after_task"] for line in lines] == [1, 2, 3]
    R = results.acc_matrix
    assert lines[2]["points_lost"] == pytest.approx(
        {"task_1": 100 * float(R[0, 0] - R[2, 0]), "task_2": 100 * float(R[1, 1] - R[2, 1])}
    )


def test_launcher_and_sweeper_configs_compose():
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="clcore.configs", version_base="1.3"):
        parallel = compose("config", ["hydra/launcher=parallel"], return_hydra_config=True).hydra
        slurm = compose("config", ["hydra/launcher=slurm"], return_hydra_config=True).hydra
        optuna_config = compose(
            "config", ["experiment=hat_pmnist", "+sweep=optuna_hat"], return_hydra_config=True
        )
        optuna = optuna_config.hydra
    assert parallel.launcher._target_.endswith("JoblibLauncher") and parallel.launcher.n_jobs == 2
    assert slurm.launcher._target_.endswith("SlurmLauncher") and slurm.launcher.timeout_min > 0
    assert optuna.sweeper._target_.endswith("OptunaSweeper") and optuna.sweeper.direction == "maximize"
    assert {"algorithm.s_max", "algorithm.mask_sparsity_reg_factor"} <= set(optuna.sweeper.params)
    # a search never scores trials on the test set
    assert optuna_config.benchmark.eval_split == "val" and optuna_config.benchmark.val_fraction > 0
    assert {"job_outcome", "sweep_aggregate"} <= set(parallel.callbacks)


def test_multirun_writes_every_job_and_an_aggregate_that_marks_failures(tmp_path):
    sweep = tmp_path / "sweep"
    # batch_size=0 fails at once; the jobs after it must still run
    command = [CLRUN, "-m", "seed=1,2", "benchmark.batch_size=32,0", *TINY, "logger=wandb", "callbacks=none"]
    command += ["trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=subprocess_env(tmp_path, WANDB_MODE="offline"),
    )
    assert done.returncode != 0, "a sweep with failed jobs must exit non-zero"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"], done.stderr[-3000:]
    for job, completed in (("0", True), ("1", False), ("2", True), ("3", False)):
        assert (sweep / job / "results" / "summary.json").is_file() == completed, job
        assert (sweep / job / "results" / "FAILED").is_file() != completed, job
    assert "batch_size" in (sweep / "1" / "results" / "FAILED").read_text()
    # every job wrote its own wandb run: the first one was finished before the second began
    assert len(list((sweep / "0" / "wandb").glob("offline-run-*"))) == 1
    assert len(list((sweep / "2" / "wandb").glob("offline-run-*"))) == 1

    aggregate = json.loads((sweep / "aggregate.json").read_text())
    good, bad = aggregate["configurations"]
    assert good["configuration"].startswith("benchmark.batch_size=32") and "seed" not in good["configuration"]
    assert (good["jobs"], good["completed"], good["failed"]) == (2, 2, 0)
    assert (bad["jobs"], bad["completed"], bad["failed"]) == (2, 0, 2)
    finals = [
        json.loads((sweep / j / "results" / "summary.json").read_text())["average_accuracy"]
        for j in ("0", "2")
    ]
    assert good["average_accuracy_mean"] == pytest.approx(sum(finals) / 2)
    assert good["average_accuracy_std"] == pytest.approx(abs(finals[0] - finals[1]) / 2**0.5)
    with open(sweep / "aggregate.csv") as stream:
        table = list(csv.DictReader(stream))
    assert [(r["completed"], r["failed"]) for r in table] == [("2", "0"), ("0", "2")]
    assert (sweep / "aggregate.png").stat().st_size > 10_000


def test_ddp_on_two_cpu_processes_gives_the_single_process_matrix(make_config, tmp_path):
    """Two processes with batch B each take the same samples per step as one process with 2B
    (each rank takes every second sample), and DDP averages their gradients: the runs must agree,
    and the test accuracy, summed over the ranks' shards, must be the same matrix.

    DIL (one shared head) and the first 40 batches of each task: TIL heads created after the first
    task start from another RNG state under DDP (Lightning re-seeds every Trainer), and a ragged
    last batch would be averaged differently; neither is about the metrics.
    """
    same = [*TINY, "paradigm=dil", "trainer.limit_train_batches=40", "trainer.accelerator=cpu"]
    out = tmp_path / "ddp"
    command = [CLRUN, *same, "benchmark.batch_size=16", "trainer.strategy=ddp", "trainer.devices=2"]
    command += ["callbacks=none", "logger=[]", "trainer.enable_progress_bar=false", f"hydra.run.dir={out}"]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, env=subprocess_env(tmp_path), timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "train_ddp_process_1.log").is_file()  # the second process really ran, in the same folder
    with open(out / "results" / "acc_matrix.csv") as stream:
        rows = list(csv.reader(stream))[1:]
    ddp = torch.tensor(
        [[float(v) if v else float("nan") for v in row[1:]] for row in rows], dtype=torch.float64
    )

    single = run_sequence(make_config(*same, "benchmark.batch_size=32"))
    torch.testing.assert_close(ddp, single.trained, rtol=0, atol=1e-6, equal_nan=True)


def test_docs_build_strict(tmp_path):
    if shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mkdocs is not installed (pip install 'clcore[docs]')")
    mkdocs = str(Path(sys.executable).with_name("mkdocs"))
    done = subprocess.run(
        [mkdocs, "build", "--strict", "-d", str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-5000:]
    site = tmp_path / "site"
    for page in (
        "index.html",
        "quickstart/index.html",
        "configuration/index.html",
        "sweeps/index.html",
        "api/callbacks/index.html",
    ):
        assert (site / page).is_file(), page
    configuration = (site / "configuration" / "index.html").read_text()
    assert (
        "logger=tensorboard" in configuration and "hydra/launcher=slurm" in configuration
    )  # generated from the configs
    callbacks_page = (site / "extending" / "callbacks" / "index.html").read_text()
    # the tested example, included from tests/helpers.py
    assert "has lost since it was trained" in callbacks_page and "--8&lt;--" not in callbacks_page


def test_every_task_logs_its_training_loss_even_when_shorter_than_the_logging_stride(make_config):
    """Split digits: about 10 training batches per task against log_every_n_steps=50 (a new
    Trainer per task restarts the count): each task still reaches the loggers at least 4 times."""
    cfg = make_config(
        "benchmark=split_digits", "logger=csv", "trainer.log_every_n_steps=50", "trainer.max_epochs=1"
    )
    run_sequence(cfg)
    with open(Path(cfg.paths.output_dir) / "logs" / "metrics.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    for task in range(1, 6):
        logged = [r for r in rows if r.get(f"train/loss/task_{task}")]
        assert len(logged) >= 4, (task, len(logged))


def test_a_sweep_ends_with_its_table_and_the_aggregate_has_a_column_per_swept_parameter(tmp_path):
    sweep = tmp_path / "sweep"
    command = [CLRUN, "-m", "seed=1,2", "optimizer.lr=0.001,0.01", *TINY, "callbacks=none", "logger=[]"]
    command += [
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
        "hydra.callbacks.sweep_aggregate.plot=false",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=subprocess_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout[done.stdout.index("final average accuracy and BWT") :].splitlines()
    assert table[1].split()[:3] == ["optimizer.lr", "jobs", "done"]
    aggregate = json.loads((sweep / "aggregate.json").read_text())
    for line, row in zip(table[3:5], aggregate["configurations"]):
        mean, std = 100 * row["average_accuracy_mean"], 100 * row["average_accuracy_std"]
        assert line.split()[:2] == [row["parameters"]["optimizer.lr"], "2/2"]
        assert f"{mean:.2f} ± {std:.2f}" in line
    with open(sweep / "aggregate.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["optimizer.lr"] for r in rows] == ["0.001", "0.01"] and "seed" not in rows[0]


def test_tensorboard_hparams_hold_the_final_metrics_beside_the_settings(make_config):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config(
        *TINY, "logger=tensorboard", "+callbacks.hp._target_=clcore.callbacks.LogHyperparameters"
    )
    final = run_sequence(cfg).summary()
    events = EventAccumulator(str(Path(cfg.paths.output_dir) / "logs" / "tensorboard")).Reload()
    assert events.Scalars("hparams/average_accuracy")[-1].value == pytest.approx(final["average_accuracy"])
    assert events.Scalars("hparams/bwt")[-1].value == pytest.approx(final["bwt"])
    plugin = events.PluginTagToContent("hparams")
    assert (
        "_hparams_/session_start_info" in plugin and b"optimizer/lr" in plugin["_hparams_/session_start_info"]
    )


def test_an_optuna_study_records_a_refused_trial_as_failed_and_goes_on(tmp_path):
    """One trial per batch (the default): a trial whose value is refused (weight_decay=-1) is
    recorded as failed, in the study and in its folder, and the search still finishes."""
    sweep = tmp_path / "sweep"
    command = [
        CLRUN,
        "-m",
        "+sweep=optuna",
        "optimizer.weight_decay=choice(-1.0,0.0)",
        "optimizer.lr=choice(0.001)",
    ]
    command += [
        "hydra.sweeper.n_trials=4",
        *TINY,
        "callbacks=none",
        "logger=[]",
        "trainer.enable_progress_bar=false",
    ]
    command += [f"hydra.sweep.dir={sweep}", "hydra.callbacks.sweep_aggregate.plot=false"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=subprocess_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    failed = sorted(path.parent.parent.name for path in sweep.glob("*/results/FAILED"))
    assert failed and all(
        "optimizer.weight_decay=-1.0" in (sweep / job / "results" / "FAILED").read_text() for job in failed
    )
    assert len(failed) < 4, "every trial failed: the test no longer shows a study going on"
    best = (sweep / "optimization_results.yaml").read_text()
    assert "optimizer.weight_decay: 0.0" in best


def test_wandb_runs_are_named_by_their_overrides_and_a_sweep_is_one_group():
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    from clcore.loggers.wandb import job_identity

    assert job_identity("default") is None  # outside a Hydra job: the configured name stays
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="clcore.configs", version_base="1.3"):
        cfg = compose(
            "config", ["seed=2", "optimizer.lr=0.01", "hydra.sweep.dir=multirun/x"], return_hydra_config=True
        )
    try:
        for mode, group in ((RunMode.MULTIRUN, "default multirun/x"), (RunMode.RUN, None)):
            with read_write(cfg.hydra), open_dict(cfg):
                cfg.hydra.mode = mode
            HydraConfig.instance().set_config(cfg)
            assert job_identity("default") == ("default seed=2 optimizer.lr=0.01", group)
    finally:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()
