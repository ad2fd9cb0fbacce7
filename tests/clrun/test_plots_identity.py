"""Plots that say what they show: the Captum figure names its run, marks the model's predictions
and has a colour bar; an Optuna sweep is reported as trials, best first, not as n = 1
configurations; every legend and label stays on its figure (issue 15, item 8)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from clcore.callbacks.attributions import Attributions
from clcore.callbacks.base import CLCallback
from clcore.callbacks.figures import off_figure
from clcore.clrun.sweep_figures import aggregate_figure
from clcore.clrun.sweeps import aggregate_sweep, main, summary_table
from clcore.clrun.task_loop import run_sequence

CLRUN = str(Path(sys.executable).with_name("clrun"))


# -- (a) the Captum figure ---------------------------------------------------------------------
class PredictionProbe(CLCallback):
    """After every task, what the test step predicts (argmax of ``eval_logits`` of the prepared
    batch) for the first ``num_images`` test images of every task seen: the reference the
    attribution callback's recorded predictions must equal. Kept in ``PredictionProbe.seen``."""

    seen: dict[tuple[int, int], torch.Tensor] = {}

    def __init__(self, num_images: int = 3) -> None:
        self.num_images = num_images

    def on_task_end(self, trainer, algorithm, task_id, results):
        benchmark = trainer.datamodule
        algorithm.eval()
        with torch.no_grad():
            for seen in range(task_id + 1):
                split = benchmark.task_split(benchmark.eval_split, seen)
                images = split.images[: self.num_images]
                batch = benchmark.prepare_batch(images, seen)
                PredictionProbe.seen[(seen + 1, task_id + 1)] = algorithm.eval_logits(batch, seen).argmax(-1)


@pytest.mark.slow
def test_attribution_figure_names_the_run_and_marks_each_prediction(make_config, tmp_path):
    PredictionProbe.seen.clear()
    cfg = make_config(
        "benchmark.num_tasks=2",
        "trainer.max_epochs=1",
        "callbacks=attributions",
        "callbacks.attributions.num_images=3",
        "+callbacks.attributions.attribute_kwargs.n_steps=8",
        f"+callbacks.probe._target_={PredictionProbe.__module__}.PredictionProbe",
    )
    run_sequence(cfg)
    folder = tmp_path / "run" / "attributions"
    assert (folder / "task_1.png").stat().st_size > 10_000 and (folder / "task_2.png").is_file()
    recorded = {
        (j, t): json.loads((folder / f"task_{j}" / f"predictions_after_task_{t}.json").read_text())
        for j, t in ((1, 1), (1, 2), (2, 2))
    }
    assert not (folder / "task_2" / "predictions_after_task_1.json").exists()
    assert set(PredictionProbe.seen) == set(recorded)
    for key, record in recorded.items():
        # what the test step predicts for these images, after that task
        assert record["predicted"] == PredictionProbe.seen[key].tolist(), key
        labels = torch.load(folder / f"task_{key[0]}" / "labels.pt", weights_only=True).tolist()
        assert record["target"] == labels  # TIL: the head's targets are the local labels
        # Permuted digits: every task has the ten digits, local label = the digit
        assert record["true_class"] == labels and record["predicted_class"] == record["predicted"]

    shown = json.loads((folder / "task_1.json").read_text())
    assert shown["true_class"] == recorded[(1, 1)]["true_class"]
    for t in (1, 2):
        row, record = shown["after_task"][str(t)], recorded[(1, t)]
        assert row["predicted_class"] == record["predicted_class"]
        assert row["correct"] == [p == q for p, q in zip(record["predicted"], record["target"])]
    # the run's identity, as the other plots carry it (figures.run_caption)
    assert shown["caption"].startswith("Finetuning · PermutedBenchmark (digits, 2 tasks) · TIL · seed 1")
    assert "after task 2: AA" in shown["caption"]

    figure, record = Attributions(num_images=3).figure(folder, 0, 1, shown["caption"])
    assert record == shown
    assert off_figure(figure, dpi=100) == []
    titles = [ax.get_title() for ax in figure.axes]
    for t in (1, 2):
        for column, (true, predicted, right) in enumerate(
            zip(
                shown["true_class"],
                shown["after_task"][str(t)]["predicted_class"],
                shown["after_task"][str(t)]["correct"],
            )
        ):
            assert f"true {true} / pred {predicted} {'✓' if right else '✗'}" in titles, (t, column)
    colour_bar = figure.axes[-1]
    assert "attribution to the true class" in colour_bar.get_ylabel()
    ticks = [label.get_text() for label in colour_bar.get_yticklabels()]
    assert any("supports" in tick for tick in ticks) and any("against" in tick for tick in ticks)
    assert colour_bar.get_ylim() == (-1.0, 1.0)  # symmetric: white is no attribution


@pytest.mark.slow
def test_a_captum_method_drawing_random_numbers_leaves_the_run_bit_identical(make_config):
    """Shapley value sampling permutes the features with the global generator; the callback forks
    and restores it, so the next task trains from the same random numbers (dropout draws every step)."""
    run = ["benchmark.num_tasks=3", "trainer.max_epochs=1", "backbone.dropout=0.2"]
    bare = run_sequence(make_config(*run, subdir="bare")).acc_matrix
    explained = run_sequence(
        make_config(
            *run,
            "callbacks=attributions",
            "callbacks.attributions.method=ShapleyValueSampling",
            "callbacks.attributions.num_images=2",
            "+callbacks.attributions.attribute_kwargs.n_samples=1",
            subdir="explained",
        )
    ).acc_matrix
    torch.testing.assert_close(explained, bare, rtol=0, atol=0, equal_nan=True)

    # the method really draws from the global generator: without the fork, R would differ
    from clcore.clrun.construction import build

    benchmark, algorithm = build(make_config("benchmark.num_tasks=2", subdir="probe"))
    algorithm.setup_task(0, benchmark.num_classes_of(0))
    split = benchmark.task_split("test", 0)
    state = torch.random.get_rng_state()
    Attributions("ShapleyValueSampling", attribute_kwargs={"n_samples": 1}).attribute(
        algorithm, benchmark, split.images[:2], split.labels[:2], 0
    )
    assert not torch.equal(state, torch.random.get_rng_state())


# -- (b) sweeps: Optuna trials against grid configurations --------------------------------------
def _write_job(
    sweep: Path, job: str, overrides: list[str], average_accuracy: float | None, sweeper=None
) -> None:
    """A job folder as clrun leaves it: ``.hydra/overrides.yaml`` (and ``hydra.yaml`` with the
    sweeper, when given), ``results/summary.json`` when it finished, ``results/FAILED`` when not."""
    folder = sweep / job
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if sweeper is not None:
        (folder / ".hydra" / "hydra.yaml").write_text(
            yaml.safe_dump({"hydra": {"sweeper": sweeper, "job": {"num": int(job)}}})
        )
    (folder / "results").mkdir()
    if average_accuracy is None:
        (folder / "results" / "FAILED").write_text("diverged\n")
        return
    summary = {
        "num_tasks": 2,
        "tasks_done": 2,
        "average_accuracy": average_accuracy,
        "average_accuracy_per_task": [0.9, average_accuracy],
        "bwt": -0.1,
        "average_forgetting": 0.1,
    }
    (folder / "results" / "summary.json").write_text(json.dumps(summary))


def _table_rows(table: str) -> list[list[str]]:
    """The console table's cells (separated by two spaces or more), below its header and rule."""
    return [re.split(r"\s{2,}", line.strip()) for line in table.splitlines()[2:]]


@pytest.mark.slow
def test_an_optuna_search_is_reported_as_trials_best_first(tmp_path):
    sweep = tmp_path / "sweep"
    command = [
        CLRUN,
        "-m",
        "+sweep=optuna",
        "optimizer.weight_decay=choice(-1.0,0.0)",
        "hydra.sweeper.n_trials=5",
    ]
    command += ["benchmark.num_tasks=2", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    command += [
        "callbacks=none",
        "logger=[]",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    aggregate = json.loads((sweep / "aggregate.json").read_text())
    assert aggregate["sweeper"]["kind"] == "optuna" and aggregate["sweeper"]["direction"] == "maximize"
    trials = aggregate["trials"]
    assert [t["trial"] for t in trials] == [0, 1, 2, 3, 4]  # by trial number
    completed = [t for t in trials if t["status"] == "completed"]
    failed = [t for t in trials if t["status"] == "failed"]
    assert len(completed) >= 2 and failed, "the search should have finished and failed trials"
    for trial in trials:
        assert "optimizer.lr" in trial["parameters"]  # sampled per trial; the shared overrides are not listed
        assert "benchmark.num_tasks" not in trial["parameters"]
        summary = sweep / trial["job"] / "results" / "summary.json"
        if trial["status"] == "completed":
            assert trial["objective"] == json.loads(summary.read_text())["average_accuracy"]
    # the best so far: the running maximum of the objective over the trials up to each one
    running = None
    for trial in trials:
        if trial["objective"] is not None:
            running = trial["objective"] if running is None else max(running, trial["objective"])
        assert trial["best_so_far"] == running
    best = max(completed, key=lambda t: t["objective"])
    assert [t["trial"] for t in trials if t["best"]] == [best["trial"]]
    # Optuna's own answer agrees
    optuna_best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert optuna_best["best_value"] == pytest.approx(best["objective"])

    # the table at the end: best objective first, the best marked, the failed ones last
    printed = done.stdout[done.stdout.index("Optuna trials, best objective") :].splitlines()
    header, *lines = [line for line in printed[1:] if line and not line.startswith(("-", "("))]
    assert header.split()[:2] == ["rank", "trial"] and "AA % (objective, maximize)" in header
    assert lines[0].startswith("1 (best)") and lines[0].split()[2] == str(best["trial"])
    shown = [float(line.split()[-2]) for line in lines if not line.startswith("-")]
    assert shown == sorted(shown, reverse=True) and len(shown) == len(completed)
    assert all(line.startswith("-") and "failed" in line for line in lines[len(completed) :])

    with open(sweep / "aggregate.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(r["trial"]) for r in rows[: len(completed)]] == [
        t["trial"] for t in sorted(completed, key=lambda t: -t["objective"])
    ]
    assert rows[0]["best"] == "1" and all(r["best"] == "0" for r in rows[1:])
    assert all(r["status"] == "failed" and r["rank"] == "" for r in rows[len(completed) :])

    assert (sweep / "aggregate.png").stat().st_size > 10_000
    figure = aggregate_figure(aggregate)
    assert off_figure(figure, dpi=110) == []
    assert "Optuna search" in figure.texts[0].get_text()
    history = figure.axes[0]
    assert history.get_xlabel() == "trial number" and history.get_ylabel() == "final average accuracy (%)"
    assert any(
        label.startswith(f"best: trial {best['trial']}") for label in history.get_legend_handles_labels()[1]
    )

    # rebuilt by hand, from the files alone: the jobs' .hydra/hydra.yaml say it was Optuna
    main([str(sweep)])
    rebuilt = json.loads((sweep / "aggregate.json").read_text())
    assert rebuilt["sweeper"]["kind"] == "optuna" and rebuilt["sweeper"]["detected_from"].endswith(
        "hydra.yaml"
    )
    assert rebuilt["trials"] == trials


def test_a_grid_with_seeds_keeps_mean_and_std_per_configuration(tmp_path):
    for job, (lr, seed, value) in enumerate(
        [("0.001", 1, 0.70), ("0.001", 2, 0.74), ("0.01", 1, 0.60), ("0.01", 2, 0.64)]
    ):
        _write_job(tmp_path, str(job), [f"optimizer.lr={lr}", f"seed={seed}"], value)
    aggregate = aggregate_sweep(tmp_path)
    assert aggregate["sweeper"]["kind"] == "grid" and "trials" not in aggregate
    assert [row["jobs"] for row in aggregate["configurations"]] == [2, 2]
    table = summary_table(aggregate)
    assert table.splitlines()[0].split()[:3] == ["optimizer.lr", "jobs", "done"]
    assert "72.00 ± 2.83" in table and "62.00 ± 2.83" in table
    assert off_figure(aggregate_figure(aggregate), dpi=110) == []


def test_a_hand_typed_grid_of_single_jobs_stays_a_grid(tmp_path):
    for job, lr in enumerate(["0.001", "0.01", "0.1"]):
        _write_job(tmp_path, str(job), [f"optimizer.lr={lr}"], 0.5 + 0.1 * job)
    assert aggregate_sweep(tmp_path)["sweeper"] == {"kind": "grid", "detected_from": "no sweeper recorded"}


def test_sampled_single_job_configurations_are_trials_even_without_a_record_of_the_sweeper(tmp_path):
    values = {
        "0": ("0.0017826497151386949", 0.21),
        "1": ("0.0002755926764027377", 0.15),
        "2": ("0.015498955191377143", 0.25),
    }
    for job, (lr, value) in values.items():
        _write_job(tmp_path, job, [f"optimizer.lr={lr}", "benchmark.num_tasks=2"], value)
    _write_job(tmp_path, "3", ["optimizer.lr=0.0731", "benchmark.num_tasks=2"], None)
    aggregate = aggregate_sweep(tmp_path)
    assert aggregate["sweeper"]["kind"] == "optuna" and "sampled" in aggregate["sweeper"]["detected_from"]
    rows = _table_rows(summary_table(aggregate))
    assert [row[0].strip() for row in rows] == ["1 (best)", "2", "3", "-"]
    assert [int(row[1]) for row in rows] == [2, 0, 1, 3]
    assert [t["best_so_far"] for t in aggregate["trials"]] == [0.21, 0.21, 0.25, 0.25]


def test_a_minimising_study_ranks_the_lowest_objective_first(tmp_path):
    sweeper = {
        "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
        "direction": "minimize",
    }
    for job, value in enumerate([0.5, 0.3, 0.4]):
        _write_job(tmp_path, str(job), [f"optimizer.lr={0.001 * (job + 1)}"], value, sweeper=sweeper)
    aggregate = aggregate_sweep(tmp_path)
    assert aggregate["sweeper"] == {
        "kind": "optuna",
        "detected_from": "0/.hydra/hydra.yaml",
        "objective": "average_accuracy",
        "direction": "minimize",
    }
    assert [t["trial"] for t in aggregate["trials"] if t["best"]] == [1]
    assert [t["best_so_far"] for t in aggregate["trials"]] == [0.5, 0.3, 0.3]
    assert "AA % (objective, minimize)" in summary_table(aggregate)


def test_sweep_figures_keep_long_legends_and_many_parameters_on_the_page(tmp_path):
    data = "benchmark.root=/a/very/long/path/to/the/data/of/this/group/" + "x" * 80
    grid = tmp_path / "grid"
    for job in range(12):
        overrides = [f"algorithm.mask_sparsity_reg_factor={job / 10}", f"{data}{job}", "seed=1"]
        _write_job(grid, str(job), overrides, 0.5 + job / 100)
    aggregate = aggregate_sweep(grid)
    assert len(aggregate["configurations"]) == 12
    figure = aggregate_figure(aggregate)
    assert off_figure(figure, dpi=110) == []
    assert any("\n" in text.get_text() for text in figure.legends[0].get_texts())  # wrapped, not cut off

    search = tmp_path / "search"
    sweeper = {
        "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
        "direction": "maximize",
    }
    for job in range(8):
        overrides = [f"p{k}={(job + 1) * (k + 1) * 0.0123456789:.10f}" for k in range(6)] + [data]
        _write_job(search, str(job), overrides, None if job == 5 else 0.3 + 0.05 * (job % 4), sweeper=sweeper)
    aggregate = aggregate_sweep(search)
    figure = aggregate_figure(aggregate)
    assert off_figure(figure, dpi=110) == []
    assert len(figure.axes) == 1 + 4 + 1  # history, the first 4 of 6 parameters, the trial colour bar
