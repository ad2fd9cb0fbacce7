"""``make bench-peers``: clrun as shipped, side by side with CLArena 1.1.0 and Avalanche 0.6.

One interleaved run: each repeat runs, one after the other, ``clrun experiment=hat_pmnist``, CLArena's
HAT, ``clrun experiment=finetuning_pmnist``, CLArena's Finetuning and Avalanche's Naive, all on 10-task
Permuted MNIST from the same local files (the MNIST test set split 8k / 2k by
``scripts/mnist_from_test_set.py``). clrun runs as a user types it (``benchmark.root=<mnist>
trainer.max_epochs=1``, every default on); the peers run from their own venvs (``setup.sh``).
Per run: the whole process's wall time, train samples/s (``train_timer.py``) and the final average
accuracy over the 10 tasks. Writes ``results.json`` and ``results.md`` here, run folders under
``outputs/peers/``.

    bash experiments/benchmarks/peers/setup.sh
    .venv/bin/python experiments/benchmarks/peers/run_peers.py --repeats 3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PEERS_HOME = Path(os.environ.get("PEERS_HOME", Path.home() / ".cache" / "clcore-peers"))
CLARENA = PEERS_HOME / "clarena-1.1.0" / "bin"
AVALANCHE = PEERS_HOME / "avalanche-0.6.0" / "bin"
RUNS = ["clrun_hat", "clarena_hat", "clrun_finetuning", "clarena_finetuning", "avalanche_naive"]
LABELS = {
    "clrun_hat": "clrun HAT (`experiment=hat_pmnist`)",
    "clarena_hat": "CLArena 1.1.0 HAT",
    "clrun_finetuning": "clrun Finetuning (`experiment=finetuning_pmnist`)",
    "clarena_finetuning": "CLArena 1.1.0 Finetuning",
    "avalanche_naive": "Avalanche 0.6.0 Naive",
}


def command(name: str, root: Path, folder: Path) -> tuple[list[str], Path]:
    """The command line of run ``name`` and the folder to run it in."""
    if name.startswith("clrun_"):
        experiment = name.removeprefix("clrun_")
        return [
            str(Path(sys.executable).with_name("clrun")),
            f"experiment={experiment}_pmnist",
            f"benchmark.root={root}",
            "trainer.max_epochs=1",
            # the peers' optimiser (CLArena's and Avalanche's runs use Adam 1e-3); the shipped
            # experiments train with SGD + momentum, chosen for accuracy, which costs the same per step
            "optimizer=adam",
            "optimizer.lr=0.001",
            f"hydra.run.dir={folder}",
            "+callbacks.peer_timer._target_=train_timer.TrainTimer",  # measurement only
        ], REPO
    if name.startswith("clarena_"):
        experiment = name.removeprefix("clarena_")
        return [
            str(CLARENA / "clarena"),
            f"+experiment={experiment}_pmnist",
            f"mnist_root={root}",
            f"output_dir={folder}",
        ], HERE / "clarena"
    return [
        str(AVALANCHE / "python"),
        str(HERE / "avalanche_naive.py"),
        f"--root={root}",
        f"--out={folder / 'avalanche.json'}",
    ], HERE


def final_average_accuracy(name: str, folder: Path) -> float:
    """Final average accuracy over all tasks, read from each framework's own result file."""
    if name.startswith("clrun_"):
        return json.loads((folder / "results" / "summary.json").read_text())["average_accuracy"]
    if name.startswith("clarena_"):
        rows = list(csv.DictReader((folder / "results" / "acc.csv").open()))
        return float(rows[-1]["average_accuracy"])
    return json.loads((folder / "avalanche.json").read_text())["final_average_accuracy"]


def run(name: str, root: Path, folder: Path, timeout: float) -> dict:
    """Run once as a fresh process; wall time is the whole process, launch to exit."""
    shutil.rmtree(folder, ignore_errors=True)  # a fresh folder: never resumed from an earlier run
    folder.mkdir(parents=True)
    argv, cwd = command(name, root, folder)
    timer_json = folder / "train_timer.json"
    env = {
        **os.environ,
        "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "PEER_TIMER_JSON": str(timer_json),
    }
    started = time.perf_counter()
    with (folder / "stdout.log").open("w") as log:
        subprocess.run(
            argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=timeout
        )
    wall = time.perf_counter() - started
    timing = json.loads((folder / "avalanche.json" if name == "avalanche_naive" else timer_json).read_text())
    result = {
        "wall_seconds": round(wall, 2),
        "train_seconds": round(timing["train_seconds"], 3),
        "train_samples": timing["train_samples"],
        "train_samples_per_s": round(timing["train_samples"] / timing["train_seconds"], 1),
        "final_average_accuracy": final_average_accuracy(name, folder),
    }
    print(f"{name:<20} {json.dumps(result)}", flush=True)
    return result


def summary(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """Median and range per run name, and each peer's wall time over clrun's of the same repeat."""
    rows = {}
    for name, results in runs.items():
        walls = [r["wall_seconds"] for r in results]
        rates = [r["train_samples_per_s"] for r in results]
        accs = [r["final_average_accuracy"] for r in results]
        rows[name] = {
            "repeats": len(results),
            "wall_seconds_median": round(statistics.median(walls), 2),
            "wall_seconds_range": [min(walls), max(walls)],
            "train_samples_per_s_median": round(statistics.median(rates)),
            "train_samples": results[0]["train_samples"],
            "final_average_accuracy": [round(a, 4) for a in accs],
        }
    for peer, reference in (("clarena_hat", "clrun_hat"), ("clarena_finetuning", "clrun_finetuning")):
        if peer in runs and reference in runs:
            ratios = [p["wall_seconds"] / c["wall_seconds"] for p, c in zip(runs[peer], runs[reference])]
            rows[peer]["wall_over_clrun_median"] = round(statistics.median(ratios), 2)
            rows[peer]["wall_over_clrun_range"] = [round(min(ratios), 2), round(max(ratios), 2)]
    return rows


def markdown(rows: dict[str, dict], settings: dict) -> str:
    lines = [
        f"# clrun side by side with peers ({settings['repeats']} interleaved repeats)",
        "",
        "10-task Permuted MNIST, 784-256-100 MLP with 64-d features, one head per task, Adam 1e-3,",
        "batch 128, 1 epoch per task, test on all seen tasks after each task. Data: the MNIST *test* set",
        "split into 8,000 training and 2,000 test images by `scripts/mnist_from_test_set.py` (not",
        f"comparable to full-MNIST numbers). Machine: {settings['machine']}.",
        "",
        "| run | wall s: median [range] | train samples/s (median) | train samples | final avg acc (%) per repeat | wall / clrun's (same repeat): median [range] |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        low, high = row["wall_seconds_range"]
        ratio = ""
        if "wall_over_clrun_median" in row:
            r_low, r_high = row["wall_over_clrun_range"]
            ratio = f"{row['wall_over_clrun_median']:.2f} [{r_low:.2f}-{r_high:.2f}]"
        accs = ", ".join(f"{100 * a:.2f}" for a in row["final_average_accuracy"])
        lines.append(
            f"| {LABELS[name]} | {row['wall_seconds_median']:.1f} [{low:.1f}-{high:.1f}] | "
            f"{row['train_samples_per_s_median']} | {row['train_samples']} | {accs} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", type=Path, default=REPO / "data" / "mnist-from-test", help="holds MNIST/raw/"
    )
    parser.add_argument(
        "--src", type=Path, default=REPO.parent / "shared" / "data" / "mnist", help="t10k-* files"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", default=",".join(RUNS), help="which runs, in the order of each repeat")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run before it is abandoned")
    parser.add_argument("--output", type=Path, default=REPO / "outputs" / "peers")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="writes <this>.json and .md")
    args = parser.parse_args()
    root = args.root.resolve()
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        script = REPO / "scripts" / "mnist_from_test_set.py"
        subprocess.run([sys.executable, str(script), "--src", str(args.src), "--dst", str(root)], check=True)
    names = args.runs.split(",")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names:
            runs[name].append(run(name, root, args.output.resolve() / f"{name}_{repeat}", args.timeout))
    settings = {
        "repeats": args.repeats,
        "root": str(root),
        "data": "MNIST test set split 8,000 train / 2,000 test by scripts/mnist_from_test_set.py",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    rows = summary(runs)
    args.results.with_suffix(".json").write_text(
        json.dumps({"settings": settings, "summary": rows, "runs": runs}, indent=2) + "\n"
    )
    table = markdown(rows, settings)
    args.results.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
