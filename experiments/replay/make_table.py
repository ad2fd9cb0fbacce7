"""Collect the replay runs (``<folder>/<method>[_<buffer>]/seed_<s>/``) into a mean ± std table.

python experiments/replay/make_table.py outputs/replay/split_mnist

Rows in the order of Buzzega et al. 2020's Table 2 (Joint and SGD first, then each buffer size);
columns: final average accuracy, BWT (``results/summary.json``), the memory's footprint as the
run reports it (``memory_bytes``) and the wall time of the tasks. Writes ``<folder>/table.json``
with the mean, the standard deviation and every seed's value.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ORDER = ("joint", "finetuning", "er", "der", "derpp", "agem", "icarl", "gdumb", "er_ace")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def sort_key(name: str) -> tuple[int, int, str]:
    method, _, buffer = name.rpartition("_")
    if not buffer.isdigit():
        method, buffer = name, "0"
    return int(buffer), ORDER.index(method) if method in ORDER else len(ORDER), name


def main(folder: Path) -> None:
    runs: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*/seed_*/results/summary.json")):
        summary = json.loads(path.read_text())
        if summary["tasks_done"] == summary["num_tasks"]:
            runs.setdefault(path.parents[2].name, []).append(summary)
    table = {}
    print("| method | buffer | seeds | average accuracy (%) | BWT (points) | memory (KiB) | wall time (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in sorted(runs, key=sort_key):
        summaries = runs[name]
        buffer = sort_key(name)[0]
        method = name.rsplit("_", 1)[0] if buffer else name
        aa = [100 * s["average_accuracy"] for s in summaries]
        bwt = [100 * s["bwt"] for s in summaries]
        seconds = [sum(s["task_seconds"]) for s in summaries]
        memory = summaries[0].get("memory_bytes", [0])[-1] / 1024
        (aa_m, aa_s), (bwt_m, bwt_s), (sec_m, sec_s) = mean_std(aa), mean_std(bwt), mean_std(seconds)
        print(
            f"| {method} | {buffer or '-'} | {len(summaries)} | {aa_m:.2f} ± {aa_s:.2f} | {bwt_m:.2f} ± {bwt_s:.2f} "
            f"| {memory:.0f} | {sec_m:.1f} ± {sec_s:.1f} |"
        )
        table[name] = {
            "average_accuracy": aa,
            "bwt": bwt,
            "task_seconds": seconds,
            "memory_bytes": memory * 1024,
        }
    (folder / "table.json").write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
