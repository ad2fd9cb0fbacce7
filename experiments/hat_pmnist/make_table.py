"""Collect the runs under a folder (``<folder>/<algorithm>/seed_<s>/``) into a mean ± std table.

python experiments/hat_pmnist/make_table.py outputs/hat_pmnist_table [algorithm ...]

With algorithm names after the folder, only those rows, in that order.

Columns: average accuracy, BWT and forgetting (``results/summary.json``); the final accuracy of
tasks 1-5 and of tasks 6-10 (the last row of ``results/acc_matrix.csv``: do later tasks learn as
well as early ones?); the capacity left after the last task, for the methods that report one; the
wall time of the tasks. Also writes ``<folder>/table.json`` with every run's summary.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path


def mean_std(values: list[float], scale: float = 100.0) -> str:
    values = [scale * v for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def final_row(run: Path) -> list[float]:
    with open(run / "results" / "acc_matrix.csv", newline="") as stream:
        rows = list(csv.reader(stream))
    return [float(cell) for cell in rows[-1][1:] if cell]


def main(folder: Path, only: list[str] | None = None) -> None:
    runs: dict[str, list[tuple[Path, dict]]] = {}
    for summary_path in sorted(folder.glob("*/seed_*/results/summary.json")):
        run = summary_path.parents[1]
        runs.setdefault(run.parent.name, []).append((run, json.loads(summary_path.read_text())))
    out = {}
    print(
        "| algorithm | seeds | average accuracy (%) | BWT (points) | forgetting (points) "
        "| tasks 1-5 (%) | tasks 6-10 (%) | capacity after last task (%) | wall time (s) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for algorithm in only or list(runs):
        found = runs.get(algorithm, [])
        complete = [(run, s) for run, s in found if s["tasks_done"] == s["num_tasks"]]
        summaries = [s for _, s in complete]
        rows = [final_row(run) for run, _ in complete]
        half = min(len(row) for row in rows) // 2 if rows else 0
        capacity = [s["capacity"][-1] for s in summaries if "capacity" in s]
        seconds = [sum(s["task_seconds"]) for s in summaries]
        print(
            f"| {algorithm} | {len(complete)} | {mean_std([s['average_accuracy'] for s in summaries])} "
            f"| {mean_std([s['bwt'] for s in summaries])} | {mean_std([s['average_forgetting'] for s in summaries])} "
            f"| {mean_std([statistics.mean(r[:half]) for r in rows])} "
            f"| {mean_std([statistics.mean(r[half:]) for r in rows])} "
            f"| {mean_std(capacity) if capacity else 'n/a'} | {mean_std(seconds, scale=1.0)} |"
        )
        out[algorithm] = summaries
    (folder / "table.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or None)
