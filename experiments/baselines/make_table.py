"""One table per scenario from the final runs: average accuracy, BWT and forgetting, mean ± std over seeds.

Reads ``<final dir>/<benchmark>_<paradigm>/<method>/<job>/results/summary.json`` (the layout of
``run.sh ... final``) and writes ``results.md`` and ``results.json`` next to this file.

    python experiments/baselines/make_table.py outputs/baselines/final
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIOS = {
    "split_mnist_til": "Split MNIST, task-incremental (TIL)",
    "split_mnist_dil": "Split MNIST, domain-incremental (DIL)",
    "split_mnist_cil": "Split MNIST, class-incremental (CIL)",
    "permuted_mnist_til": "Permuted MNIST (10 tasks), task-incremental (TIL)",
    "permuted_mnist_dil": "Permuted MNIST (10 tasks), domain-incremental (DIL)",
}
METHODS = ("finetuning", "joint", "ewc", "online_ewc", "si", "mas", "l2", "lwf")
NAMES = {"finetuning": "None (Finetuning)", "joint": "Joint", "ewc": "EWC", "online_ewc": "online EWC"}
NAMES |= {"si": "SI", "mas": "MAS", "l2": "L2", "lwf": "LwF"}
METRICS = ("average_accuracy", "bwt", "average_forgetting")


def overrides_of(job_dir: Path) -> dict[str, str]:
    """The job's command-line overrides (``.hydra/overrides.yaml``, one ``- key=value`` a line)."""
    lines = (job_dir / ".hydra" / "overrides.yaml").read_text().splitlines()
    return dict(line[2:].split("=", 1) for line in lines if line.startswith("- ") and "=" in line)


def mean_std(values: list[float]) -> dict[str, float | None]:
    """Mean and sample std (n - 1) in percentage points."""
    points = [100 * v for v in values]
    return {
        "mean": statistics.mean(points) if points else None,
        "std": statistics.stdev(points) if len(points) > 1 else None,
    }


def collect(final_dir: Path) -> dict:
    """``{scenario: {method: {seeds, coefficient, metric: {mean, std}, per_seed}}}`` of the completed runs."""
    results: dict = {}
    for scenario in SCENARIOS:
        for method in METHODS:
            jobs = []
            for summary_file in sorted((final_dir / scenario / method).glob("*/results/summary.json")):
                summary = json.loads(summary_file.read_text())
                if summary["tasks_done"] != summary["num_tasks"]:
                    continue
                overrides = overrides_of(summary_file.parents[1])
                jobs.append((overrides, summary))
            if not jobs:
                continue
            overrides = jobs[0][0]
            coefficient = overrides.get("algorithm.reg_lambda") or overrides.get(
                "algorithm.distillation_lambda"
            )
            row = {"seeds": [int(o["seed"]) for o, _ in jobs], "coefficient": coefficient}
            for metric in METRICS:
                row[metric] = mean_std([s[metric] for _, s in jobs])
            row["per_seed"] = {o["seed"]: {m: s[m] for m in METRICS} for o, s in jobs}
            row["average_accuracy_per_task"] = {o["seed"]: s["average_accuracy_per_task"] for o, s in jobs}
            results.setdefault(scenario, {})[method] = row
    return results


def cell(value: dict) -> str:
    if value["mean"] is None:
        return "n/a"
    return f"{value['mean']:.2f}" + ("" if value["std"] is None else f" ± {value['std']:.2f}")


def markdown(results: dict) -> str:
    lines = []
    for scenario, title in SCENARIOS.items():
        if scenario not in results:
            continue
        lines += [f"### {title}", ""]
        lines += [
            "| method | coefficient | seeds | average accuracy (%) | BWT (points) | forgetting (points) |"
        ]
        lines += ["| --- | --- | --- | --- | --- | --- |"]
        for method, row in results[scenario].items():
            lines.append(
                f"| {NAMES[method]} | {row['coefficient'] or '–'} | {len(row['seeds'])} "
                f"| {cell(row['average_accuracy'])} | {cell(row['bwt'])} | {cell(row['average_forgetting'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("final_dir", type=Path)
    args = parser.parse_args()
    results = collect(args.final_dir)
    text = markdown(results)
    (HERE / "results.md").write_text(text)
    (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
