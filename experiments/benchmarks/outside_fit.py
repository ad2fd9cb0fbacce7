"""The default ``clrun``'s time per task outside training and testing, in one process.

Runs ``clrun``'s own ``run_sequence`` on the default config (5-task Permuted Digits, every default
on) ``--repeats`` times and splits each run's wall time into Lightning's ``Trainer.fit`` and
``Trainer.test`` (wrapped with a clock) and everything else: composing nothing (the config is
composed once, before the clock), the pre-flight check, data, building, checkpoints, results,
callbacks at task and sequence end. Per task: that rest divided by the number of tasks.

    python experiments/benchmarks/outside_fit.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="clrun overrides (default: none, the offline default)")
    args = parser.parse_args()

    import lightning

    from clcore.clrun import compose, run_sequence

    inside = {"seconds": 0.0}

    def clocked(method):
        def wrapper(*positional, **keywords):
            started = time.perf_counter()
            try:
                return method(*positional, **keywords)
            finally:
                inside["seconds"] += time.perf_counter() - started

        return wrapper

    lightning.Trainer.fit = clocked(lightning.Trainer.fit)
    lightning.Trainer.test = clocked(lightning.Trainer.test)
    per_task = []
    for repeat in range(
        args.repeats + 1
    ):  # the first run warms caches (the digits' cache file) and is not counted
        with tempfile.TemporaryDirectory() as folder:
            cfg = compose(args.overrides, output_dir=folder)
            inside["seconds"] = 0.0
            started = time.perf_counter()
            results = run_sequence(cfg)
            total = time.perf_counter() - started
        outside = (total - inside["seconds"]) / results.tasks_done
        if repeat:
            per_task.append(outside)
        print(
            f"run {repeat}: {total:.2f} s, in fit/test {inside['seconds']:.2f} s, outside {outside:.3f} s per task"
        )
    print(
        f"outside fit/test per task: median {statistics.median(per_task):.3f} s "
        f"[{min(per_task):.3f}-{max(per_task):.3f}] over {len(per_task)} runs"
    )


if __name__ == "__main__":
    main()
