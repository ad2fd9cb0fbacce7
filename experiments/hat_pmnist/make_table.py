"""Collect ``results/summary.json`` of every run under a folder into a mean +- std table.

python experiments/hat_pmnist/make_table.py outputs/hat_pmnist_table > experiments/hat_pmnist/table.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def mean_std(values: list[float], scale: float = 100.0) -> str:
    values = [scale * v for v in values]
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def main(folder: Path) -> None:
    rows = {}
    for summary_path in sorted(folder.glob("*/seed_*/results/summary.json")):
        algorithm = summary_path.parents[2].name
        rows.setdefault(algorithm, []).append(json.loads(summary_path.read_text()))
    out = {}
    print(
        "| algorithm | seeds | average accuracy (%) | BWT (points) | forgetting (points) | capacity after last task (%) | wall time (s) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for algorithm, summaries in rows.items():
        complete = [s for s in summaries if s["tasks_done"] == s["num_tasks"]]
        capacity = [s["capacity"][-1] for s in complete if "capacity" in s]
        seconds = [sum(s["task_seconds"]) for s in complete]
        print(
            f"| {algorithm} | {len(complete)} | {mean_std([s['average_accuracy'] for s in complete])} "
            f"| {mean_std([s['bwt'] for s in complete])} | {mean_std([s['average_forgetting'] for s in complete])} "
            f"| {mean_std(capacity) if capacity else 'n/a'} | {mean_std(seconds, scale=1.0)} |"
        )
        out[algorithm] = complete
    (folder / "table.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
