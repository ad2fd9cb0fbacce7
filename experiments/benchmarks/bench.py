"""``make bench``: clrun against a hand-written PyTorch loop on the same data and seeds.

For each algorithm, in one process: (a) the plain loop of ``plain_loops.py``, (b) the same
run through clcore's pipeline (the composed ``experiment=<algo>_pmnist`` config with matching
overrides, exactly what ``clrun`` runs). Prints a table of wall time per phase, training
samples/s and the ratio clrun / plain, checks both reached the same accuracies, and writes
``results.json``. Then the growth table (5 / 10 / 20 tasks) and the start-up time of ``clrun``.

    python experiments/benchmarks/bench.py --root data/mnist-from-test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import plain_loops  # noqa: E402

from clcore.benchmarks import PermutedBenchmark  # noqa: E402
from clcore.callbacks.phase_timer import PhaseTimer  # noqa: E402
from clcore.clrun.task_loop import run_sequence  # noqa: E402


def compose(overrides: list[str], output_dir: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="clcore.configs", version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[*overrides, f"paths.output_dir={output_dir}"])


def task_data(root: str | None, source: str, num_tasks: int, seed: int) -> plain_loops.TaskData:
    """The exact tensors clcore's benchmark uses (same split, same permutations)."""
    benchmark = PermutedBenchmark(source, num_tasks, root=root, seed=seed, val_fraction=0.0)
    benchmark.load()
    train, test = benchmark.task_split("train", 0), benchmark.task_split("test", 0)
    return plain_loops.TaskData(
        train.images,
        train.labels,
        test.images,
        test.labels,
        benchmark._mean,
        benchmark._std,
        benchmark.permutations,
    )


def run_clrun(algorithm: str, args, num_tasks: int, output_dir: Path):
    overrides = [
        f"experiment={algorithm}_pmnist",
        f"benchmark.source={args.source}",
        f"benchmark.root={args.root}" if args.root else "benchmark.root=null",
        f"benchmark.num_tasks={num_tasks}",
        "benchmark.val_fraction=0",
        f"benchmark.batch_size={args.batch_size}",
        f"benchmark.eval_batch_size={args.eval_batch_size}",
        f"trainer.max_epochs={args.epochs}",
        f"seed={args.seed}",
        "trainer.enable_progress_bar=false",
        "callbacks=none",
        "logger=[]",
        "save_checkpoints=false",
        "resume=false",  # repeats reuse the folder: start over, never continue a finished run
    ]
    timer = PhaseTimer()
    started = time.perf_counter()
    cfg = compose(overrides, output_dir)
    # The plain loop draws no plots: no configured callback at all, including those an
    # experiment adds on top of callbacks=none (hat_pmnist's mask plots, ~0.4 s at the end).
    cfg.callbacks = None
    results = run_sequence(cfg, extra_callbacks=[timer])
    total = time.perf_counter() - started
    phases = timer.totals()
    matrix = [results.acc_matrix[i, : i + 1].tolist() for i in range(num_tasks)]
    return matrix, {"setup": total - phases["train"] - phases["test"], **phases}


PLAIN = {"finetuning": plain_loops.finetuning, "hat": plain_loops.hat}


def total_seconds(run) -> float:
    return sum(run[1].values())


def compare(algorithm: str, args, num_tasks: int, output_dir: Path) -> dict:
    """``args.repeats`` interleaved pairs (plain, clrun) of the same run.

    The machine's speed drifts by 10-15% over seconds, so the ratio is taken per pair (two runs
    a few seconds apart see the same machine) and the median over pairs is reported; the phase
    times shown are those of each path's fastest run.
    """
    data = task_data(args.root, args.source, num_tasks, args.seed)
    plain_runs, clrun_runs = [], []
    for _ in range(args.repeats):
        plain_runs.append(
            PLAIN[algorithm](
                data, num_tasks, args.seed, args.epochs, args.batch_size, args.eval_batch_size, lr=1e-3
            )
        )
        clrun_runs.append(run_clrun(algorithm, args, num_tasks, output_dir / f"{algorithm}_{num_tasks}"))
    (plain_matrix, plain_time) = min(plain_runs, key=total_seconds)
    (clrun_matrix, clrun_time) = min(clrun_runs, key=total_seconds)
    samples = num_tasks * args.epochs * len(data.train_y)
    row = {"algorithm": algorithm, "tasks": num_tasks, "train_samples": samples}
    for name, timing, matrix in (("plain", plain_time, plain_matrix), ("clrun", clrun_time, clrun_matrix)):
        row[name] = {**{k: round(v, 3) for k, v in timing.items()}, "total": round(sum(timing.values()), 3)}
        row[name]["train_samples_per_s"] = round(samples / timing["train"], 1)
        row[name]["final_average_accuracy"] = sum(matrix[-1]) / num_tasks
    pair_ratios = [total_seconds(c) / total_seconds(p) for p, c in zip(plain_runs, clrun_runs)]
    row["ratio_total"] = round(statistics.median(pair_ratios), 3)
    row["ratio_pairs"] = [round(r, 3) for r in pair_ratios]
    row["ratio_fastest"] = round(row["clrun"]["total"] / row["plain"]["total"], 3)
    row["ratio_train"] = round(
        statistics.median(c[1]["train"] / p[1]["train"] for p, c in zip(plain_runs, clrun_runs)), 3
    )
    row["test_share_clrun"] = round(clrun_time["test"] / row["clrun"]["total"], 3)
    # every run of both paths against the first plain run: equal work, to the last bit
    row["max_accuracy_difference"] = max(
        abs(a - b)
        for matrix, _ in plain_runs + clrun_runs
        for reference_row, run_row in zip(plain_runs[0][0], matrix)
        for a, b in zip(reference_row, run_row)
    )
    return row


def startup_seconds(args, launches: int = 3) -> list[float]:
    """From launching ``clrun`` to its first training batch (imports, config, data, model), per launch."""
    marker = Path(args.output) / "first_batch_time"
    command = [
        str(Path(sys.executable).with_name("clrun")),
        f"benchmark.source={args.source}",
        f"benchmark.root={args.root}" if args.root else "benchmark.root=null",
        "benchmark.num_tasks=1",
        f"hydra.run.dir={Path(args.output) / 'startup'}",
        "trainer.enable_progress_bar=false",
        "+trainer.max_steps=1",
        "resume=false",
        "+callbacks.first_batch._target_=first_batch.FirstBatchMarker",
        f"+callbacks.first_batch.path={marker}",
    ]
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    seconds = []
    for _ in range(launches):
        marker.unlink(missing_ok=True)
        launched = time.time()
        subprocess.run(command, check=True, capture_output=True, env=env)
        seconds.append(round(float(marker.read_text()) - launched, 3))
    return seconds


def print_table(rows: list[dict]) -> None:
    header = f"{'algorithm':<11}{'tasks':>6} | {'path':<6}{'setup s':>9}{'train s':>9}{'test s':>8}{'total s':>9}{'samples/s':>11}{'avg acc':>9} | clrun/plain: median of pairs [range]"
    print(header)
    print("-" * len(header))
    for row in rows:
        for name in ("plain", "clrun"):
            r = row[name]
            pairs = row["ratio_pairs"]
            ratio = f"{row['ratio_total']:.2f} [{min(pairs):.2f}-{max(pairs):.2f}]" if name == "clrun" else ""
            print(
                f"{row['algorithm']:<11}{row['tasks']:>6} | {name:<6}{r['setup']:>9.2f}{r['train']:>9.2f}{r['test']:>8.2f}"
                f"{r['total']:>9.2f}{r['train_samples_per_s']:>11.0f}{100 * r['final_average_accuracy']:>9.2f} | {ratio}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", default="data/mnist-from-test", help="folder holding MNIST/raw/ (None with --source digits)"
    )
    parser.add_argument("--source", default="mnist")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-batch-size", type=int, default=4096)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--growth", default="5,10,20", help="task counts for the growth table ('' to skip)")
    parser.add_argument("--algorithms", default=",".join(PLAIN))
    parser.add_argument("--repeats", type=int, default=5, help="interleaved (plain, clrun) pairs per row")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: least noise on a shared machine)"
    )
    parser.add_argument("--output", default="outputs/bench")
    args = parser.parse_args()
    if args.source == "digits":
        args.root = None
    torch.set_num_threads(args.threads)
    # Lightning sets this on import; a hand-written loop never has it, and clcore's pipeline
    # removes it on GPU-less machines (see clcore.lightning_speed.use_cached_cuda_check).
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    algorithms = args.algorithms.split(",")
    print(
        f"# clrun vs plain PyTorch: {args.tasks}-task Permuted {args.source}, 1 epoch/task, batch {args.batch_size}"
    )
    rows = [compare(a, args, args.tasks, output) for a in algorithms]
    print_table(rows)
    growth = []
    if args.growth:
        print("\n# growth with the number of tasks")
        main_rows = {(row["algorithm"], row["tasks"]): row for row in rows}  # reused, not re-run
        growth = [
            main_rows.get((a, n)) or compare(a, args, n, output)
            for a in algorithms
            for n in map(int, args.growth.split(","))
        ]
        print_table(growth)
    startup = startup_seconds(args)
    print(f"\nclrun start-up (launch -> first training batch), {len(startup)} launches: {startup} s")
    report = {
        "settings": vars(args),
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
        },
        "comparison": rows,
        "growth": growth,
        "startup_seconds": startup,
    }
    (output / "results.json").write_text(json.dumps(report, indent=2))
    print(f"written {output / 'results.json'}")
    failures = [r for r in rows + growth if r["max_accuracy_difference"] > 1e-6]
    if failures:
        raise SystemExit(
            f"plain loop and clrun disagree on accuracy: {[(r['algorithm'], r['tasks'], r['max_accuracy_difference']) for r in failures]}"
        )


if __name__ == "__main__":
    main()
