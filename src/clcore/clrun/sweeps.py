"""Hydra callbacks for runs and sweeps: mark failed jobs, and aggregate a multirun over seeds.

Registered in ``configs/hydra/default.yaml``. What a sweep leaves on disk::

    multirun/<name>/<date>_<time>/
        0/ 1/ ...                one folder per job (a whole clrun output folder each)
            results/FAILED       only if the job raised: the traceback
        aggregate.csv            one row per configuration: mean and std over its jobs
                                 (an Optuna search: one row per trial, best objective first)
        aggregate.json           the same, plus every job with its status and metrics
        aggregate.png            average accuracy after each task, mean +- std per configuration
                                 (an Optuna search: objective per trial, best so far, per parameter)

An Optuna search is not a grid: every trial is one job with values of its own, so "mean ± std
over the jobs of a configuration" would be n = 1 everywhere. ``sweep_kind`` tells the two apart
(the sweeper in the config, else the jobs' ``.hydra/hydra.yaml``, else the shape of the sweep) and
the aggregate then reports trials: ordered by trial number with the best objective so far, and
the table sorted by objective with the best trial marked.

Failures: Hydra runs every job of a batch even when one raises (``run_job`` catches the
exception), then re-raises the first failure, so ``clrun -m`` exits non-zero *after* all jobs
ran. Hydra then skips ``on_multirun_end``; that is why the aggregate is rewritten after every job
(``on_job_end``), so it is complete, failed jobs marked ``failed``, whatever happens at the end.
Jobs killed from outside (a cluster's time limit, out of memory) never reach ``on_job_end``;
they show as ``incomplete``. ``python -m clcore.clrun.sweeps <sweep dir>`` rebuilds the aggregate by hand.

This module imports neither torch nor matplotlib at import time: Hydra instantiates these
callbacks before every run, also ``clrun --cfg job``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import statistics
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from clcore.clrun.cli import RefusedConfig, RunStopped
from clcore.clrun.signals import StoppedBySignal
from clcore.utils.atomic import write_text_atomic

log = logging.getLogger(__name__)

# Final-run metrics of results/summary.json that the aggregate reports (mean and std over jobs).
METRICS = ("average_accuracy", "bwt", "average_forgetting", "fwt")


def record_outcome(config: DictConfig, job_return: JobReturn) -> None:
    """``results/FAILED`` with the traceback if the job raised; removed when it succeeded.

    A run whose configuration was refused leaves its folder as it was (the folder may hold
    another, finished experiment): its problems are on the screen. So does a refused job of a
    sweep in a folder holding a run; in a new job folder it gets the marker (with the problems) and
    its ``.hydra/overrides.yaml``, so that the aggregate lists it as failed. A run stopped by a signal gets
    the marker with the one line that says how to continue (``clcore.clrun.signals``).
    """
    marker = Path(config.hydra.runtime.output_dir) / "results" / "FAILED"
    if job_return.status == JobStatus.FAILED:
        error = job_return._return_value  # the exception (``.return_value`` would re-raise it)
        if isinstance(error, RefusedConfig):
            job_dir = marker.parent.parent
            if config.hydra.mode == RunMode.RUN or (job_dir / "config.yaml").exists():
                return  # nothing ran and nothing was touched (a finished run there stays finished)
            # A new job folder of a sweep: the aggregate lists the job, refused, with its overrides.
            write_text_atomic(
                job_dir / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(config.hydra.overrides.task)
            )
        if isinstance(error, (StoppedBySignal, RefusedConfig, RunStopped)):
            text = f"{error}\n"  # what happened and what to do: no traceback to read through
        else:
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        write_text_atomic(marker, text)
    else:
        marker.unlink(missing_ok=True)


class JobOutcome(Callback):
    """After every run or job: ``results/FAILED`` holds the traceback of a job that raised (and is
    removed when the same folder later succeeds), and an open wandb run is finished, marked
    failed or not, so that the next job of a sweep in the same process starts its own wandb run
    instead of writing into this one. Before a sweep starts, a SLURM launcher on a machine without
    SLURM is refused in one line (submitit's own error is a traceback about ``srun``)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "Optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_", default="")):
            import optuna  # the sweeper imports it next anyway

            # its own coloured INFO line per study; Hydra's sweeper logs the study already
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        target = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
        if target.endswith("SlurmLauncher") and shutil.which("sbatch") is None:
            # Hydra turns a callback's exception into a warning and goes on: exit here, in one line.
            sys.stderr.write(
                "hydra/launcher=slurm submits every job with SLURM's sbatch, which this machine does not have: "
                "run the command on the cluster's login node, or try it here with hydra/launcher=submitit_local "
                "(docs/sweeps.md)\n"
            )
            raise SystemExit(1)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        record_outcome(config, job_return)
        wandb = sys.modules.get("wandb")
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.finish(exit_code=1 if job_return.status == JobStatus.FAILED else 0)


class SweepAggregate(Callback):
    """Writes ``aggregate.csv`` / ``.json`` / ``.png`` in the sweep folder of a multirun.

    Jobs are grouped into configurations by their command-line overrides, leaving out the
    ``ignore`` keys (``seed``): ``clrun -m seed=1,2,3 algorithm=finetuning,fix`` gives two
    configurations of three jobs each. The standard deviation is the sample one (n - 1), empty
    for a single job.
    """

    def __init__(self, ignore: list[str] | tuple[str, ...] = ("seed",), plot: bool = True) -> None:
        self.ignore = tuple(ignore)
        self.plot = plot
        self._sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir = Path(str(config.hydra.sweep.dir))

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            # Hydra calls end hooks in reverse order of the config: this job's marker may not be
            # written yet, and the aggregate must already count it.
            record_outcome(config, job_return)
            # Resolved in the job's config, as Hydra did to place the job: the same timestamp
            # (Hydra copies the resolver cache), but the job's own ${name}. Sweeping over
            # experiments with different names therefore gives one folder, and one aggregate, per name.
            self.write(Path(str(config.hydra.sweep.dir)), sweeper_of(config))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = self._sweep_dir or Path(str(config.hydra.sweep.dir))
        if _job_dirs(sweep_dir):  # the jobs may all have gone to folders of their own names
            aggregate = self.write(sweep_dir, sweeper_of(config))
            # the sweep's result on the screen, where the user is looking when it ends
            if aggregate["sweeper"]["kind"] == "optuna":
                print(f"\nsweep {sweep_dir}: Optuna trials, best objective (final average accuracy) first")
            else:
                print(
                    f"\nsweep {sweep_dir}: final average accuracy and BWT over the jobs of each configuration"
                )
            print(summary_table(aggregate))
            print(f"(aggregate.csv / .json{' / .png' if self.plot else ''} in {sweep_dir})", flush=True)

    def write(self, sweep_dir: Path, sweeper: dict | None = None) -> dict:
        aggregate = aggregate_sweep(sweep_dir, self.ignore, sweeper)
        write_text_atomic(sweep_dir / "aggregate.json", json.dumps(aggregate, indent=2) + "\n")
        write_text_atomic(sweep_dir / "aggregate.csv", aggregate_csv(aggregate))
        if self.plot and any(c["completed"] for c in aggregate["configurations"]):
            from clcore.clrun.sweep_figures import plot_aggregate

            plot_aggregate(aggregate, sweep_dir / "aggregate.png")
        return aggregate


# ---- the aggregate, from the files alone (any launcher, any machine) ----------------------------
def _job_dirs(sweep_dir: Path) -> list[Path]:
    found = {p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")}
    found |= {p.parent.parent for p in sweep_dir.glob("**/results/summary.json")}
    found |= {p.parent.parent for p in sweep_dir.glob("**/results/FAILED")}

    def order(path: Path):  # 0, 1, ..., 10 rather than 0, 1, 10, 2
        relative = path.relative_to(sweep_dir).as_posix()
        return (0, int(relative), "") if relative.isdigit() else (1, 0, relative)

    return sorted(found, key=order)


def read_job(job_dir: Path) -> dict:
    """One job: its overrides, status (completed / failed / incomplete) and final metrics."""
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in OmegaConf.load(overrides_file)] if overrides_file.is_file() else []
    summary_file = job_dir / "results" / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    if (job_dir / "results" / "FAILED").is_file():
        status = "failed"
    elif summary is not None and summary.get("tasks_done") == summary.get("num_tasks"):
        status = "completed"
    else:
        status = "incomplete"  # still running, or killed before it could say so
    job = {"job": job_dir.name, "dir": str(job_dir), "overrides": overrides, "status": status}
    if job_dir.name.isdigit():  # hydra.sweep.subdir is the job number; an Optuna trial's number
        job["trial"] = int(job_dir.name)
    job["tasks_done"] = summary.get("tasks_done") if summary else 0
    if status == "completed":
        for name in METRICS:
            job[name] = summary.get(name)
        job["average_accuracy_per_task"] = summary.get("average_accuracy_per_task")
    return job


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def aggregate_sweep(
    sweep_dir: str | Path, ignore: tuple[str, ...] = ("seed",), sweeper: dict | None = None
) -> dict:
    """Jobs of the sweep in ``sweep_dir`` grouped by configuration, with mean / std of ``METRICS``.

    ``sweeper``: what ran the sweep (``sweeper_of(config)``), if known; else ``sweep_kind`` finds
    out from the files. An Optuna search also gets ``trials`` (``optuna_trials``).
    """
    sweep_dir = Path(sweep_dir)
    jobs = [read_job(d) for d in _job_dirs(sweep_dir)]
    groups: dict[str, list[dict]] = {}
    for job in jobs:
        kept = [o for o in job["overrides"] if o.split("=", 1)[0].lstrip("+~") not in ignore]
        groups.setdefault(" ".join(kept) or "(defaults)", []).append(job)
    configurations = []
    for name, members in groups.items():
        done = [j for j in members if j["status"] == "completed"]
        row = {
            "configuration": name,
            "parameters": _parameters(name),
            "jobs": len(members),
            "completed": len(done),
            "failed": sum(j["status"] == "failed" for j in members),
            "incomplete": sum(j["status"] == "incomplete" for j in members),
            "job_dirs": [j["job"] for j in members],
        }
        for metric in METRICS:
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std([j.get(metric) for j in done])
        curves = [j["average_accuracy_per_task"] for j in done if j.get("average_accuracy_per_task")]
        if curves and all(len(c) == len(curves[0]) for c in curves):
            stats = [_mean_std(list(step)) for step in zip(*curves)]
            row["average_accuracy_per_task_mean"] = [m for m, _ in stats]
            row["average_accuracy_per_task_std"] = [s for _, s in stats]
        configurations.append(row)
    aggregate = {
        "sweep_dir": str(sweep_dir),
        "ignored_overrides": list(ignore),
        "sweeper": sweep_kind(sweep_dir, jobs, configurations, sweeper),
        "configurations": configurations,
        "jobs": jobs,
    }
    if aggregate["sweeper"]["kind"] == "optuna":
        aggregate["trials"] = optuna_trials(jobs, ignore, aggregate["sweeper"]["direction"])
    return aggregate


# ---- grid or Optuna search ----------------------------------------------------------------------
OBJECTIVE = "average_accuracy"  # what clrun returns to a sweeper (clcore.clrun.cli)


def sweeper_of(config: DictConfig) -> dict | None:
    """``{"target": ..., "direction": ...}`` of the sweeper in a job's config; None outside Hydra."""
    target = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
    if target is None:
        return None
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    return {"target": str(target), "direction": None if direction is None else str(direction)}


def _sweeper_from_files(sweep_dir: Path, jobs: list[dict]) -> tuple[dict | None, str]:
    """The sweeper as Hydra recorded it: ``multirun.yaml`` in the sweep folder, else the first
    job's ``.hydra/hydra.yaml`` (clrun writes it once the job starts)."""
    import yaml  # PyYAML, Hydra's own dependency; plain YAML: the interpolations stay strings

    candidates = [sweep_dir / "multirun.yaml", *(Path(j["dir"]) / ".hydra" / "hydra.yaml" for j in jobs)]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            hydra = (yaml.safe_load(path.read_text()) or {}).get("hydra") or {}
        except (OSError, yaml.YAMLError):
            continue
        sweeper = hydra.get("sweeper") or {}
        if "_target_" in sweeper:
            direction = sweeper.get("direction")
            return {"target": str(sweeper["_target_"]), "direction": direction}, path.relative_to(
                sweep_dir
            ).as_posix()
    return None, ""


def _looks_sampled(value: str) -> bool:
    """A number no one types by hand: a float with more than 4 significant digits (0.0017826497)."""
    try:
        number = float(value)
    except ValueError:
        return False
    digits = value.lower().split("e")[0].replace("-", "").replace(".", "").strip("0")
    return math.isfinite(number) and len(digits) > 4


def sweep_kind(
    sweep_dir: Path, jobs: list[dict], configurations: list[dict], sweeper: dict | None = None
) -> dict:
    """``{"kind": "optuna" | "grid", "detected_from": ..., "objective": ..., "direction": ...}``.

    Optuna when the sweeper is Hydra's Optuna sweeper (``sweeper``, from the running job's
    config; else as recorded in the sweep's files); when nothing records the sweeper, when every
    configuration is a single job and some swept value looks sampled (a float with more than 4
    significant digits; a grid's values are typed by hand). A grid otherwise.
    """
    source = "the running sweep's config"
    if sweeper is None:
        sweeper, source = _sweeper_from_files(sweep_dir, jobs)
    if sweeper is not None:
        if "optuna" in sweeper["target"].lower():
            direction = str(sweeper.get("direction") or "maximize").lower()
            if direction.startswith("studydirection."):  # an enum spelt out
                direction = direction.split(".", 1)[1]
            return {"kind": "optuna", "detected_from": source, "objective": OBJECTIVE, "direction": direction}
        return {"kind": "grid", "detected_from": source}
    rows = configurations
    varying = varying_parameters({"configurations": rows})
    sampled = any(
        all(_is_number(row["parameters"].get(key, "")) for row in rows)
        and any(_looks_sampled(row["parameters"].get(key, "")) for row in rows)
        for key in varying
    )
    if len(rows) > 1 and all(row["jobs"] == 1 for row in rows) and sampled:
        return {
            "kind": "optuna",
            "detected_from": "single-job configurations with sampled values (no sweeper recorded)",
            "objective": OBJECTIVE,
            "direction": "maximize",
        }
    return {"kind": "grid", "detected_from": "no sweeper recorded"}


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def optuna_trials(jobs: list[dict], ignore: tuple[str, ...], direction: str = "maximize") -> list[dict]:
    """One entry per trial, by trial number: its parameters (the overrides that differ between
    trials), status, objective (final average accuracy) and metrics, the best objective so far,
    its ``rank`` by objective (1 = best; None for a trial without one) and ``best``."""
    sign = -1.0 if direction == "minimize" else 1.0
    ordered = sorted(enumerate(jobs), key=lambda item: item[1].get("trial", item[0]))
    parameters = [_parameters(" ".join(job["overrides"])) for _, job in ordered]
    keys = list(dict.fromkeys(key for p in parameters for key in p if key not in ignore))
    varying = [k for k in keys if len({p.get(k) for p in parameters}) > 1] if len(ordered) > 1 else keys
    trials, best_so_far = [], None
    for (index, job), params in zip(ordered, parameters):
        value = job.get(OBJECTIVE) if job["status"] == "completed" else None
        if value is not None and not math.isnan(value):
            if best_so_far is None or sign * value > sign * best_so_far:
                best_so_far = value
        else:
            value = None
        trials.append(
            {
                "trial": job.get("trial", index),
                "job": job["job"],
                "status": job["status"],
                "parameters": {k: params[k] for k in varying if k in params},
                "objective": value,
                **{metric: job.get(metric) for metric in METRICS},
                "best_so_far": best_so_far,
            }
        )
    scored = sorted((t for t in trials if t["objective"] is not None), key=lambda t: -sign * t["objective"])
    for rank, trial in enumerate(scored, start=1):  # ties: the earlier trial first (a stable sort)
        trial["rank"] = rank
    for trial in trials:
        trial.setdefault("rank", None)
        trial["best"] = trial["rank"] == 1
    return trials


def trials_by_objective(aggregate: dict) -> list[dict]:
    """The trials best objective first; trials without one (failed, incomplete) last, by number."""
    trials = aggregate.get("trials", [])
    return sorted(trials, key=lambda t: (t["rank"] is None, t["rank"] or 0, t["trial"]))


def _parameters(configuration: str) -> dict[str, str]:
    """``{"optimizer.lr": "0.01", ...}`` from a configuration's overrides (``+``/``~`` prefixes dropped)."""
    pairs = [o.split("=", 1) for o in configuration.split(" ") if "=" in o]
    return {key.lstrip("+~"): value for key, value in pairs}


def varying_parameters(aggregate: dict) -> list[str]:
    """The override keys whose value differs between configurations (all of them for one configuration)."""
    rows = aggregate["configurations"]
    keys = list(dict.fromkeys(key for row in rows for key in row.get("parameters", {})))
    if len(rows) < 2:
        return keys
    return [k for k in keys if len({row.get("parameters", {}).get(k) for row in rows}) > 1]


def aggregate_csv(aggregate: dict) -> str:
    """One row per configuration: its varying parameters as columns of their own, the job counts,
    and mean / std of each metric (fractions, as in ``summary.json``). An Optuna search: one row
    per trial instead (``trials_csv``)."""
    if aggregate.get("sweeper", {}).get("kind") == "optuna":
        return trials_csv(aggregate)
    parameters = varying_parameters(aggregate)
    columns = ["configuration", *parameters, "jobs", "completed", "failed", "incomplete"]
    columns += [f"{m}_{s}" for m in METRICS for s in ("mean", "std")] + ["job_dirs"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in aggregate["configurations"]:
        cells = []
        for column in columns:
            value = row["parameters"].get(column) if column in parameters else row.get(column)
            if column == "job_dirs":
                value = " ".join(value)
            elif isinstance(value, float):
                value = f"{value:.6f}"
            cells.append("" if value is None else value)
        writer.writerow(cells)
    return buffer.getvalue()


def _trial_parameters(aggregate: dict) -> list[str]:
    return list(dict.fromkeys(key for trial in aggregate.get("trials", []) for key in trial["parameters"]))


def trials_csv(aggregate: dict) -> str:
    """An Optuna search, one row per trial, best objective first (failed and incomplete trials
    last): rank, ``best`` (1 for the best trial), trial number, the sampled parameters, status,
    the objective and the other metrics (fractions), the best objective up to that trial, job folder."""
    parameters = _trial_parameters(aggregate)
    columns = ["rank", "best", "trial", *parameters, "status", "objective", *METRICS, "best_so_far", "job"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for trial in trials_by_objective(aggregate):
        cells = []
        for column in columns:
            value = trial["parameters"].get(column) if column in parameters else trial.get(column)
            if column == "best":
                value = int(bool(value))
            elif isinstance(value, float):
                value = f"{value:.6f}"
            cells.append("" if value is None else value)
        writer.writerow(cells)
    return buffer.getvalue()


def _short(value: str) -> str:
    """A sampled float to 4 significant digits for the screen and the figure (the files keep every digit)."""
    return f"{float(value):.4g}" if _looks_sampled(value) else value


def _text_table(lines: list[list[str]]) -> str:
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)


def trials_table(aggregate: dict) -> str:
    """An Optuna search as the console shows it: a line per trial, best objective first, the best
    marked ``1 (best)`` in the rank column; sampled values to 4 significant digits; failed and
    incomplete trials last, with their status in place of the objective."""
    parameters = _trial_parameters(aggregate)
    direction = aggregate["sweeper"].get("direction", "maximize")
    header = ["rank", "trial", *parameters, f"AA % (objective, {direction})", "BWT points"]
    lines = [header]
    for trial in trials_by_objective(aggregate):
        rank = "-" if trial["rank"] is None else str(trial["rank"]) + (" (best)" if trial["best"] else "")
        objective = trial["status"] if trial["objective"] is None else f"{100 * trial['objective']:.2f}"
        bwt = "-" if trial.get("bwt") is None else f"{100 * trial['bwt']:.2f}"
        named = [_short(trial["parameters"].get(k, "")) for k in parameters]
        lines.append([rank, str(trial["trial"]), *named, objective, bwt])
    return _text_table(lines)


def summary_table(aggregate: dict) -> str:
    """The aggregate as the console shows it at the end of a sweep: a line per configuration with
    its varying parameters, completed / all jobs, and final AA and BWT as mean ± std, in %.
    An Optuna search: a line per trial instead, best first (``trials_table``)."""
    if aggregate.get("sweeper", {}).get("kind") == "optuna":
        return trials_table(aggregate)
    parameters = varying_parameters(aggregate)

    def shown(mean, std) -> str:
        if mean is None:
            return "-"
        return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")

    header = [*(parameters or ["configuration"]), "jobs done", "AA % (mean ± std)", "BWT points (mean ± std)"]
    lines = [header]
    for row in aggregate["configurations"]:
        named = [row["parameters"].get(k, "") for k in parameters] if parameters else [row["configuration"]]
        lines.append(
            [
                *named,
                f"{row['completed']}/{row['jobs']}",
                shown(row.get("average_accuracy_mean"), row.get("average_accuracy_std")),
                shown(row.get("bwt_mean"), row.get("bwt_std")),
            ]
        )
    return _text_table(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m clcore.clrun.sweeps <sweep dir> [--ignore seed ...]``: (re)write the aggregate."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument(
        "--ignore", nargs="*", default=["seed"], help="override keys that do not define a configuration"
    )
    args = parser.parse_args(argv)
    aggregate = SweepAggregate(ignore=args.ignore).write(args.sweep_dir)
    print(aggregate_csv(aggregate), end="")


if __name__ == "__main__":
    main()
