"""Pick each method's coefficient from the selection sweeps (validation data only).

Reads ``<select dir>/<benchmark>/<method>/<paradigm>/aggregate.json`` of ``run.sh ... select``:
one configuration per coefficient value, whose ``average_accuracy`` is the final
average accuracy over all tasks on held-out *training* images (the selection root's "test"
split, see ``selection_root.py``). Per benchmark and paradigm (scenario), the value with the highest one wins.

    python experiments/baselines/select.py outputs/baselines/select --write experiments/baselines/selected.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TUNED_KEYS = ("algorithm.reg_lambda", "algorithm.distillation_lambda")


def parse(configuration: str) -> dict[str, str]:
    """``"a=1 b=x"`` -> ``{"a": "1", "b": "x"}`` (Hydra overrides as the aggregate writes them)."""
    return dict(item.split("=", 1) for item in configuration.split())


def grid_of(aggregate_file: Path) -> dict[str, dict[str, float]]:
    """``{paradigm: {value: final validation average accuracy}}`` of one method's selection sweep."""
    grid: dict[str, dict[str, float]] = {}
    for row in json.loads(aggregate_file.read_text())["configurations"]:
        if not row["completed"]:
            continue
        overrides = parse(row["configuration"])
        value = next(overrides[k] for k in TUNED_KEYS if k in overrides)
        grid.setdefault(overrides["paradigm"], {})[value] = row["average_accuracy_mean"]
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("select_dir", type=Path)
    parser.add_argument("--write", type=Path, help="selected.json to write")
    args = parser.parse_args()
    selected: dict = {"grid": {}, "selected": {}}
    for aggregate_file in sorted(args.select_dir.glob("*/*/*/aggregate.json")):
        benchmark, method = aggregate_file.parents[2].name, aggregate_file.parents[1].name
        for paradigm, scores in grid_of(aggregate_file).items():
            selected["grid"].setdefault(benchmark, {}).setdefault(method, {})[paradigm] = scores
            best = max(scores, key=scores.get)
            selected["selected"].setdefault(benchmark, {}).setdefault(paradigm, {})[method] = float(best)
            table = "  ".join(f"{v}: {100 * a:.2f}" for v, a in scores.items())
            print(f"{benchmark} {paradigm} {method}: {table}  -> {best}")
    if args.write:
        args.write.write_text(json.dumps(selected, indent=1) + "\n")


if __name__ == "__main__":
    main()
