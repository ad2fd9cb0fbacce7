"""What a replay step costs against a plain step of the same batch size (part of ``make bench``).

Each algorithm runs the real task loop (``run_sequence`` on the packaged configs, Split MNIST CIL
with the shipped MLP, batch 128, or Split Digits without ``--root``), 2 tasks; a callback times
every training step of task 2, when the memory is full (``on_train_batch_start`` to
``on_train_batch_end``: the batch's preparation, forward, backward and optimizer step, and the
memory's update), as the CPU time of the process's main thread (``StepTimer``). Finetuning is the plain step. The algorithms run one after another within a
round, rounds repeated, and each replay step's median is divided by the Finetuning median of the
same round (the machine's speed drifts between rounds).

GDumb is not in the table: during the stream its step only stores the batch; its cost is the
training on the memory after each task, which ``task_seconds`` reports.

    python experiments/benchmarks/replay_step.py --root data/mnist-from-test --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clcore.callbacks import CLCallback
from clcore.clrun import compose
from clcore.clrun.task_loop import run_sequence

ALGORITHMS = ("finetuning", "er", "der", "derpp", "agem", "er_ace", "icarl")


class StepTimer(CLCallback):
    """CPU time of the main thread over every training step of the last task.

    With one intra-op thread (``--threads 1``) the step's work runs on that thread, so its CPU time
    is the step's cost; unlike wall time it does not count the time other processes on a shared
    machine hold the core (wall-clock ratios measured here varied from 1.0 to 3.2 for the same ER
    step while other jobs ran)."""

    def __init__(self, last_task: int) -> None:
        self.last_task = last_task
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.thread_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.task_id == self.last_task:
            self.seconds.append(time.thread_time() - self._start)


def step_seconds(algorithm: str, args, folder: Path) -> float:
    data = (
        ["benchmark=split_mnist", f"benchmark.root={args.root}"] if args.root else ["benchmark=split_digits"]
    )
    overrides = [
        *data,
        "paradigm=cil",
        f"algorithm={algorithm}",
        "benchmark.num_tasks=2",
        f"benchmark.batch_size={args.batch_size}",
        f"trainer.max_epochs={args.epochs}",
        "trainer.enable_progress_bar=false",
        "save_checkpoints=false",
    ]
    timer = StepTimer(last_task=1)
    run_sequence(compose(overrides, output_dir=folder / algorithm), extra_callbacks=[timer])
    return statistics.median(timer.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default=None, help="folder holding MNIST/raw/ (default: Split Digits)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--output", default="outputs/bench/replay_step.json")
    args = parser.parse_args()
    if args.root:
        args.root = str(Path(args.root).resolve())
    torch.set_num_threads(args.threads)
    algorithms = args.algorithms.split(",")
    if algorithms[0] != "finetuning":
        algorithms.insert(0, "finetuning")
    medians: dict[str, list[float]] = {a: [] for a in algorithms}
    ratios: dict[str, list[float]] = {a: [] for a in algorithms[1:]}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.repeats):
            for algorithm in algorithms:
                medians[algorithm].append(step_seconds(algorithm, args, Path(tmp) / str(round_index)))
            for algorithm in algorithms[1:]:
                ratios[algorithm].append(medians[algorithm][-1] / medians["finetuning"][-1])
            print(
                f"round {round_index + 1}: "
                + ", ".join(f"{a} {1e3 * m[-1]:.2f} ms" for a, m in medians.items())
            )
    data = f"Split MNIST from {args.root}" if args.root else "Split Digits (scikit-learn 8x8)"
    lines = [
        f"Replay step against a plain step: {data}, CIL, task 2 of 2, batch {args.batch_size}, "
        f"{args.epochs} epochs, {args.threads} thread(s), {args.repeats} interleaved rounds.",
        "",
        "| algorithm | step, CPU ms (median of rounds) | ratio to Finetuning's step, median [range] |",
        "| --- | --- | --- |",
    ]
    for algorithm in algorithms:
        ms = 1e3 * statistics.median(medians[algorithm])
        if algorithm == "finetuning":
            lines.append(f"| finetuning (plain step) | {ms:.2f} | 1 |")
            continue
        r = ratios[algorithm]
        lines.append(f"| {algorithm} | {ms:.2f} | {statistics.median(r):.2f} [{min(r):.2f}, {max(r):.2f}] |")
    table = "\n".join(lines)
    print("\n" + table)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps({"settings": vars(args), "step_seconds": medians, "ratios": ratios}, indent=2)
    )
    output.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
