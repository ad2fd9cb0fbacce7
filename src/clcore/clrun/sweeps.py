"""Hydra callbacks for runs and sweeps: mark failed jobs, and aggregate a multirun over seeds.

Registered in ``configs/hydra/default.yaml``. What a sweep leaves on disk::

    multirun/<name>/<date>_<time>/
        0/ 1/ ...                one folder per job (a whole clrun output folder each)
            results/FAILED       only if the job raised: the traceback
        aggregate.csv            one row per configuration: mean and std over its jobs
        aggregate.json           the same, plus every job with its status and metrics
        aggregate.png            average accuracy after each task, mean +- std per configuration

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
            self.write(Path(str(config.hydra.sweep.dir)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = self._sweep_dir or Path(str(config.hydra.sweep.dir))
        if _job_dirs(sweep_dir):  # the jobs may all have gone to folders of their own names
            aggregate = self.write(sweep_dir)
            # the sweep's result on the screen, where the user is looking when it ends
            print(f"\nsweep {sweep_dir}: final average accuracy and BWT over the jobs of each configuration")
            print(summary_table(aggregate))
            print(f"(aggregate.csv / .json{' / .png' if self.plot else ''} in {sweep_dir})", flush=True)

    def write(self, sweep_dir: Path) -> dict:
        aggregate = aggregate_sweep(sweep_dir, self.ignore)
        write_text_atomic(sweep_dir / "aggregate.json", json.dumps(aggregate, indent=2) + "\n")
        write_text_atomic(sweep_dir / "aggregate.csv", aggregate_csv(aggregate))
        if self.plot and any(c["completed"] for c in aggregate["configurations"]):
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


def aggregate_sweep(sweep_dir: str | Path, ignore: tuple[str, ...] = ("seed",)) -> dict:
    """Jobs of the sweep in ``sweep_dir`` grouped by configuration, with mean / std of ``METRICS``."""
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
    return {
        "sweep_dir": str(sweep_dir),
        "ignored_overrides": list(ignore),
        "configurations": configurations,
        "jobs": jobs,
    }


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
    and mean / std of each metric (fractions, as in ``summary.json``)."""
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


def summary_table(aggregate: dict) -> str:
    """The aggregate as the console shows it at the end of a sweep: a line per configuration with
    its varying parameters, completed / all jobs, and final AA and BWT as mean ± std, in %."""
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
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    text = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)


def plot_aggregate(aggregate: dict, path: Path) -> Path:
    """Average accuracy after each task (mean, band = +- std) and final AA / BWT per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in aggregate["configurations"] if r["completed"]]
    # what tells the configurations apart; the overrides they share (a data path) go to the title
    varying = varying_parameters(aggregate)
    shared = [
        f"{k}={v}" for k, v in (rows[0].get("parameters", {}) if rows else {}).items() if k not in varying
    ]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(11, 3.6 + 0.22 * len(rows)), gridspec_kw={"width_ratios": [3, 2]}
    )
    for index, row in enumerate(rows):
        colour = plt.get_cmap("tab10")(index % 10)
        named = " ".join(f"{k}={row['parameters'][k]}" for k in varying if k in row.get("parameters", {}))
        label = f"{index + 1}: {named or row['configuration']}  (n={row['completed']})"
        means = row.get("average_accuracy_per_task_mean")
        if means:
            tasks = range(1, len(means) + 1)
            mean = [100 * m for m in means]
            std = [100 * (s or 0.0) for s in row["average_accuracy_per_task_std"]]
            left.plot(tasks, mean, marker="o", color=colour, label=label)
            left.fill_between(
                tasks,
                [m - s for m, s in zip(mean, std)],
                [m + s for m, s in zip(mean, std)],
                color=colour,
                alpha=0.2,
            )
        for offset, metric, marker in ((-0.12, "average_accuracy", "o"), (0.12, "bwt", "s")):
            if row[f"{metric}_mean"] is not None:
                std = 100 * (row[f"{metric}_std"] or 0.0)
                right.errorbar(
                    index + offset, 100 * row[f"{metric}_mean"], yerr=std, fmt=marker, color=colour, capsize=4
                )
    failed = sum(r["failed"] + r["incomplete"] for r in aggregate["configurations"])
    left.set_xlabel("after training task")
    left.set_ylabel("average accuracy (%)")
    left.set_ylim(0, 100)
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.grid(alpha=0.3)
    left.set_title("average accuracy, mean ± std over the jobs of a configuration", fontsize=9)
    right.axhline(0, color="gray", lw=0.8)
    right.set_xticks(range(len(rows)), [str(i + 1) for i in range(len(rows))])
    right.set_xlim(-0.6, len(rows) - 0.4)
    right.set_xlabel("configuration")
    right.set_ylabel("points")
    right.set_title("final average accuracy (●) and BWT (■), mean ± std", fontsize=9)
    right.grid(alpha=0.3)
    note = f"; {failed} failed or incomplete job(s) not included" if failed else ""
    fig.legend(
        loc="lower left",
        fontsize=7,
        frameon=False,
        title=f"configurations (n = completed jobs{note})",
        title_fontsize=7,
    )
    if shared:
        fig.suptitle("every job: " + " ".join(shared), fontsize=7, color="0.3")
    fig.tight_layout(rect=(0, 0.08 + 0.06 * len(rows), 1, 0.97 if shared else 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
