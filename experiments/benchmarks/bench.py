"""``make bench``: the ``clrun`` commands users type, each default's cost, a hand-written loop, and start-up.

Every timed run is its own process, launched as a user launches it:

- ``clrun experiment=<algo>_pmnist benchmark.root=<root> trainer.max_epochs=1`` as shipped (progress
  bar, learning-curve CSV, hyperparameters to the loggers, summary table, checkpoints and CSV
  logger all on; the PNG plots off, as they are by default);
- the same with one default switched off, for every default, so each one's cost is a difference;
- the same with ``plots=true`` (what the plots would cost);
- the stripped configuration (every default off);
- ``plain_loops.py``: the same run as a hand-written PyTorch loop (the accuracies must match to the last bit).

The machine's speed drifts within seconds, so every setting runs in a pair with the shipped command,
one launched right after the other; a default's cost (and the shipped command's ratio to the plain
loop) is taken per pair, ``--repeats`` rounds of pairs, median and range reported. Each ``clrun`` runs on a
pseudo-terminal, as at a researcher's terminal (the progress bar draws as it would there). Per run:

- **whole process**: launch to exit, measured here;
- **after imports**: launch to the end of the run, minus the import of torch, Lightning and
  clcore's task loop, timed inside the real ``clrun`` process by a Hydra job callback
  (``first_batch.ImportClock``) that does the import ``clrun``'s ``main`` starts with. Python's
  own start and the import of Hydra (about 0.1 s) stay in it, so it slightly overstates clrun. For
  the plain loop: from the end of its imports to the end of its work. Both also as **CPU** seconds
  of the process, which other work on a shared machine disturbs less than wall time;
- **Python's exit**: from the end of the run to the end of the process (the interpreter's
  shutdown, which grows with what was imported).

Then start-up: launch to the first training batch of ``clrun`` (and of ``clrun experiment=hat_pmnist``)
against ``python -c "import lightning"``, interleaved the same way.

    python experiments/benchmarks/bench.py --root data/mnist-from-test --repeats 3
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import pty
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
CLRUN = str(Path(sys.executable).with_name("clrun"))
sys.path.insert(0, str(HERE))

import plain_loops  # noqa: E402

# One row each: a default that is on, and the overrides that switch it (alone) off.
DEFAULTS = {
    "progress bar": ["trainer.enable_progress_bar=false"],
    "learning curves (CSV)": ["callbacks.learning_curves=null"],
    "hyperparameters to loggers": ["callbacks.hyperparameters=null"],
    "summary table": ["callbacks.summary=null"],
    "checkpoints": ["save_checkpoints=false"],
    "CSV logger": ["logger=[]"],
}
# Options that are off by default, and the overrides that switch them on: their cost is the run
# with them minus the shipped run. The PNG plots (result plots, learning curves, HAT's mask plots)
# are off because they cost more than FLAG_SHARE of this run (docs/speed.md).
OPTIONS = {"plots": ["plots=true"]}
# Every default off: what the earlier benchmark timed. callbacks=none keeps callbacks that an
# experiment adds (hat_pmnist's mask plots), so those are switched off by name.
STRIPPED = ["callbacks=none", "trainer.enable_progress_bar=false", "save_checkpoints=false", "logger=[]"]
HAT_STRIPPED = ["callbacks.hat_masks=null"]
FLAG_SHARE = 0.05  # a default costing more than this share of the shipped run is flagged


@dataclass
class Setting:
    """One configuration, timed once per round."""

    algorithm: str
    name: str  # "as shipped", "without <default>", "stripped", "plain loop"
    overrides: list[str] | None  # clrun's arguments; None: the plain loop
    runs: list[dict] = field(default_factory=list)
    # (run of the shipped command, run of this setting), launched one right after the other
    pairs: list[tuple[dict, dict]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.algorithm}/{self.name}"


def settings_of(algorithm: str, args) -> list[Setting]:
    shipped = [
        f"experiment={algorithm}_pmnist",
        f"benchmark.root={args.root}",
        f"trainer.max_epochs={args.epochs}",
    ]
    if args.tasks is not None:
        shipped.append(f"benchmark.num_tasks={args.tasks}")
    stripped = STRIPPED + (HAT_STRIPPED if algorithm == "hat" else [])
    return [
        Setting(algorithm, "plain loop", None),
        Setting(algorithm, "as shipped", shipped),
        *(Setting(algorithm, f"without {name}", shipped + overrides) for name, overrides in DEFAULTS.items()),
        *(Setting(algorithm, f"with {name}", shipped + overrides) for name, overrides in OPTIONS.items()),
        Setting(algorithm, "stripped", shipped + stripped),
    ]


def schedule(settings: list[Setting], round_index: int) -> list[tuple[Setting, Setting]]:
    """One round: every setting in a pair with a run of its algorithm's shipped command.

    The machine's speed drifts within seconds, so each setting is compared with the shipped run
    launched right before or after it, not with one shipped run minutes away. The pairs' order
    rotates from round to round, and which of the two runs first alternates.
    """
    shipped = {s.algorithm: s for s in settings if s.name == "as shipped"}
    pairs = [(shipped[s.algorithm], s) for s in settings if s.name != "as shipped"]
    shift = round_index % len(pairs)
    pairs = pairs[shift:] + pairs[:shift]
    return [(a, b) if round_index % 2 == 0 else (b, a) for a, b in pairs]


def run_in_terminal(command: list[str], log_path: Path, env: dict) -> tuple[float, float, float]:
    """Run ``command`` with stdout/stderr on a 120x40 pseudo-terminal, its output saved to ``log_path``.

    Returns (launched, exited) wall-clock times and the process's CPU seconds. A terminal, not a
    pipe, because that is where users see ``clrun``: its progress bar draws as it does there.
    """
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "wb") as log:
        launched = time.time()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        while True:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: every writer of the terminal has exited
                break
            if not chunk:
                break
            log.write(chunk)
        code = process.wait()
        exited = time.time()
    os.close(master)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        tail = log_path.read_bytes()[-3000:].decode(errors="replace")
        raise SystemExit(f"{' '.join(command)} failed ({code}):\n{tail}")
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    return launched, exited, cpu


def read_matrix(path: Path) -> list[list[float]]:
    """``results/acc_matrix.csv`` as rows of the lower triangle."""
    rows = [line.split(",")[1:] for line in path.read_text().splitlines()[1:]]
    return [[float(cell) for cell in row if cell] for row in rows]


def run_clrun(setting: Setting, folder: Path, env: dict, keep: bool) -> dict:
    clock = folder.with_suffix(".clock.json")
    command = [
        CLRUN,
        *setting.overrides,
        f"hydra.run.dir={folder}",  # a fresh folder per run: never resumed from an earlier round
        "+hydra.callbacks.bench_clock._target_=first_batch.ImportClock",
        f"+hydra.callbacks.bench_clock.path={clock}",
    ]
    launched, exited, _ = run_in_terminal(command, folder.with_suffix(".log"), env)
    t = json.loads(clock.read_text())
    summary = json.loads((folder / "results" / "summary.json").read_text())
    matrix = read_matrix(folder / "results" / "acc_matrix.csv")
    if not keep:
        shutil.rmtree(folder)
    return {
        "whole": exited - launched,
        "after_imports": t["job_end"] - launched - (t["import_end"] - t["import_start"]),
        "cpu_after_imports": t["job_end_cpu"] - (t["import_end_cpu"] - t["import_start_cpu"]),
        "exit": exited - t["job_end"],
        "task_loop": sum(summary["task_seconds"]),
        "matrix": matrix,
    }


def run_plain(setting: Setting, folder: Path, env: dict, shape: dict) -> dict:
    out = folder.with_suffix(".json")
    command = [PYTHON, str(HERE / "plain_loops.py"), "--algorithm", setting.algorithm, "--out", str(out)]
    command += [f"--{name.replace('_', '-')}={value}" for name, value in shape.items()]
    launched, exited, _ = run_in_terminal(command, folder.with_suffix(".log"), env)
    t = json.loads(out.read_text())
    return {
        "whole": exited - launched,
        "after_imports": t["end"] - t["imports_done"],
        "cpu_after_imports": t["end_cpu"] - t["imports_done_cpu"],
        "exit": exited - t["end"],
        "task_loop": sum(t["phases"].values()),
        "matrix": t["matrix"],
        "phases": t["phases"],
    }


def timed_run(
    setting: Setting, round_index: int, runs_folder: Path, env: dict, shapes: dict, keep: bool
) -> dict:
    # a folder name that Hydra's override grammar accepts in hydra.run.dir=... (no brackets)
    stem = "".join(c if c.isalnum() else "_" for c in setting.key)
    name = f"{stem}_{round_index}_{len(setting.runs)}"
    if setting.overrides is None:
        return run_plain(setting, runs_folder / name, env, shapes[setting.algorithm])
    return run_clrun(setting, runs_folder / name, env, keep)


def run_shape(algorithm: str, args) -> dict:
    """The shipped experiment's sizes, read from its composed config, for the plain loop."""
    from clcore.clrun.cli import compose

    overrides = [f"experiment={algorithm}_pmnist", f"trainer.max_epochs={args.epochs}"]
    cfg = compose(
        overrides + ([f"benchmark.num_tasks={args.tasks}"] if args.tasks else []), output_dir="unused"
    )
    return {
        "root": args.root,
        "tasks": cfg.benchmark.num_tasks,
        "seed": cfg.seed,
        "epochs": cfg.trainer.max_epochs,
        "batch_size": cfg.benchmark.batch_size,
        "eval_batch_size": cfg.benchmark.eval_batch_size,
        "val_fraction": cfg.benchmark.val_fraction,
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1].lower(),  # torch.optim.SGD -> sgd
        "lr": cfg.optimizer.lr,
        "momentum": cfg.optimizer.get("momentum", 0.0),
    }


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def text(stats: dict, digits: int = 2) -> str:
    return f"{stats['median']:.{digits}f} [{stats['min']:.{digits}f}-{stats['max']:.{digits}f}]"


MEASURES = ("whole", "after_imports", "cpu_after_imports", "exit", "task_loop")


def summarise(algorithm_settings: list[Setting]) -> dict:
    """Per setting: medians and ranges; per default: its cost against the shipped run next to it;
    the ratios to the plain loop (the shipped command's against the plain loop next to it)."""
    by_name = {s.name: s for s in algorithm_settings}
    shipped, plain = by_name["as shipped"], by_name["plain loop"]
    base = {k: statistics.median(r[k] for r in shipped.runs) for k in ("after_imports", "cpu_after_imports")}
    rows = []
    for setting in algorithm_settings:
        runs = setting.runs
        row = {
            "setting": setting.name,
            "command": None if setting.overrides is None else " ".join(["clrun", *setting.overrides]),
            "runs": len(runs),
            **{k: spread([r[k] for r in runs]) for k in MEASURES},
            "final_average_accuracy": sum(runs[0]["matrix"][-1]) / len(runs[0]["matrix"][-1]),
            "per_run": [{k: round(r[k], 3) for k in MEASURES} for r in runs],
        }
        switched_on = setting.name.startswith("with ")
        if setting.name.startswith("without ") or setting.name == "stripped" or switched_on:
            # per pair, the shipped run minus this one: what the switched-off defaults cost
            # (for an option switched on: this run minus the shipped one, what it would cost)
            sign = -1 if switched_on else 1
            for k in ("whole", "after_imports", "cpu_after_imports"):
                row[f"cost_{k}"] = spread([sign * (a[k] - b[k]) for a, b in setting.pairs])
            for k, value in base.items():
                row[f"cost_share_{k}"] = row[f"cost_{k}"]["median"] / value
            # CPU seconds are little disturbed by other work on a shared machine; wall time also
            # shows waiting (a progress bar's refresh thread), but noisily: it counts when it
            # exceeds the share in every pair.
            row["flagged"] = setting.name.startswith("without ") and (
                row["cost_share_cpu_after_imports"] > FLAG_SHARE
                or row["cost_after_imports"]["min"] > FLAG_SHARE * base["after_imports"]
            )
        if setting is shipped:
            for k in ("after_imports", "cpu_after_imports", "whole"):
                row[f"ratio_to_plain_{k}"] = spread([a[k] / b[k] for a, b in plain.pairs])
        elif setting.overrides is not None:
            # against the plain run of the same round (not next to it: ranges are wider)
            for k in ("after_imports", "cpu_after_imports", "whole"):
                row[f"ratio_to_plain_{k}"] = spread([r[k] / p[k] for p, r in zip(plain.runs, runs)])
        rows.append(row)
    # every run against the first plain run: equal work, to the last bit
    reference = plain.runs[0]["matrix"]
    difference = max(
        abs(a - b)
        for s in algorithm_settings
        for run in s.runs
        for ref_row, row in zip(reference, run["matrix"], strict=True)
        for a, b in zip(ref_row, row, strict=True)
    )
    return {"rows": rows, "max_accuracy_difference": difference}


IMPORT_LIGHTNING = "python -c 'import lightning'"
# Stamps the end of the import and leaves at once: what follows (Python's shutdown, over a second
# after Lightning) is not start-up, and a clrun process stopped at its first batch skips it too.
IMPORT_AND_STAMP = (
    "import lightning, os, sys, time; open(sys.argv[1], 'w').write(repr(time.time())); os._exit(0)"
)


def startup(args, env: dict, folder: Path) -> dict:
    """Launch to first training batch of ``clrun``, against launch to ``import lightning`` done, interleaved.

    Each clrun process also times its own ``import lightning`` (``ImportClock``): its CPU seconds
    to the first batch minus those of that import are what clcore adds to the import, measured
    within one process and little disturbed by other work on the machine.
    """
    commands = {  # name: (file stem, clrun's arguments; None: the import alone)
        IMPORT_LIGHTNING: ("import_lightning", None),
        "clrun": ("clrun_default", []),
        "clrun experiment=hat_pmnist": (
            "clrun_hat_pmnist",
            ["experiment=hat_pmnist", f"benchmark.root={args.root}"],
        ),
    }
    runs = {name: [] for name in commands}
    subprocess.run([PYTHON, "-c", "import lightning"], check=True, env=env)  # untimed: warm the page cache
    for round_index in range(args.launches):
        for name, (short, overrides) in commands.items():
            stem = folder / f"startup_{short}_{round_index}"
            mark, clock = stem.with_suffix(".first_batch.json"), stem.with_suffix(".clock.json")
            if overrides is None:
                command = [PYTHON, "-c", IMPORT_AND_STAMP, str(mark)]
            else:
                command = [
                    CLRUN,
                    *overrides,
                    f"hydra.run.dir={stem}",
                    "+callbacks.first_batch._target_=first_batch.first_batch_marker",
                    f"+callbacks.first_batch.path={mark}",
                    "+hydra.callbacks.bench_clock._target_=first_batch.ImportClock",
                    f"+hydra.callbacks.bench_clock.path={clock}",
                ]
            launched, _, cpu = run_in_terminal(command, stem.with_suffix(".log"), env)
            if overrides is None:
                run = {"wall": json.loads(mark.read_text()) - launched, "cpu": cpu}
            else:
                t, first_batch = json.loads(clock.read_text()), json.loads(mark.read_text())
                run = {"wall": first_batch["wall"] - launched, "cpu": cpu}
                # within the process: CPU seconds to the first batch minus those of its own `import lightning`
                own_import = t["lightning_imported_cpu"] - t["import_start_cpu"]
                run["cpu_over_own_import_lightning"] = first_batch["cpu"] - own_import
                run["clcore_import_cpu"] = t["import_end_cpu"] - t["lightning_imported_cpu"]
            runs[name].append(run)
            shutil.rmtree(stem, ignore_errors=True)
    report = {}
    for name, measured in runs.items():
        row = {k: spread([r[k] for r in measured]) for k in measured[0]}
        if name != IMPORT_LIGHTNING:
            for k in ("wall", "cpu"):  # per round, against the import launched just before
                row[f"{k}_over_import_lightning"] = spread(
                    [r[k] - ref[k] for ref, r in zip(runs[IMPORT_LIGHTNING], measured)]
                )
        report[name] = {**row, "per_round": measured}
    return report


def markdown(report: dict) -> str:
    lines = []
    for algorithm, result in report["algorithms"].items():
        shipped = next(r for r in result["rows"] if r["setting"] == "as shipped")
        lines += [
            f"### {algorithm}: {report['tasks']}-task Permuted MNIST, 1 epoch per task, {report['repeats']} rounds "
            f"({shipped['runs']} runs of the shipped command, one next to each other setting's run)",
            "",
            "Seconds, median [range] over runs. A default's cost: the shipped run minus the run without it, "
            "launched next to each other, per pair (for `with plots`: the run with them minus the shipped run)."
            f" Flagged (**> {FLAG_SHARE:.0%}**): its CPU cost is more than "
            f"{FLAG_SHARE:.0%} of the shipped run's, or its wall cost is in every pair.",
            "",
            "| setting | whole process | after imports | CPU after imports | Python's exit | in the task loop "
            "| cost: after imports | cost: CPU after imports | share of shipped (wall / CPU) "
            "| / plain loop: after imports | / plain loop: CPU after imports | / plain loop: whole process |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in result["rows"]:
            cells = [row["setting"], *(text(row[k]) for k in MEASURES)]
            if "cost_cpu_after_imports" in row:
                flag = " **> 5%**" if row["flagged"] else ""
                wall, cpu = row["cost_share_after_imports"], row["cost_share_cpu_after_imports"]
                cells += [
                    text(row["cost_after_imports"]),
                    text(row["cost_cpu_after_imports"]),
                    f"{100 * wall:.1f}% / {100 * cpu:.1f}%{flag}",
                ]
            else:
                cells += ["", "", ""]
            ratios = ("after_imports", "cpu_after_imports", "whole")
            cells += [
                text(row[f"ratio_to_plain_{k}"]) if "ratio_to_plain_whole" in row else "" for k in ratios
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            f"As shipped: `{shipped['command']}`. Final average accuracy {100 * shipped['final_average_accuracy']:.2f}% "
            f"on every run of every setting (largest difference to the plain loop: "
            f"{result['max_accuracy_difference']:.1g}).",
            "",
        ]
    if not report["startup"]:
        return "\n".join(lines) + "\n"
    lines += [
        "### Start-up: launch to the first training batch",
        "",
        "| command | wall s | CPU s | wall minus `import lightning` (per round) | CPU minus `import lightning` "
        "(per round) | CPU minus its own `import lightning` | of it, importing clcore's task loop after Lightning (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["startup"].items():
        keys = (
            "wall_over_import_lightning",
            "cpu_over_import_lightning",
            "cpu_over_own_import_lightning",
            "clcore_import_cpu",
        )
        extra = [text(row[k]) for k in keys] if keys[0] in row else [""] * 4
        lines.append("| " + " | ".join([f"`{name}`", text(row["wall"]), text(row["cpu"]), *extra]) + " |")
    return "\n".join(lines) + "\n"


def provenance() -> dict:
    """Which code was timed: the commit, and the files changed since (the progress bar's among them)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout
        changed = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"commit": commit.strip(), "uncommitted": [line[3:] for line in changed.splitlines()]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", default="data/mnist-from-test", help="folder holding MNIST/raw/")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--tasks", type=int, default=None, help="benchmark.num_tasks (default: the experiment's 10)"
    )
    parser.add_argument("--algorithms", default="hat,finetuning")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds: each setting once, paired with a shipped run"
    )
    parser.add_argument("--launches", type=int, default=5, help="start-up rounds (0 to skip)")
    parser.add_argument("--only", default="", help="comma-separated setting names to run (debugging)")
    parser.add_argument(
        "--threads", type=int, default=1, help="OMP_NUM_THREADS for every timed process (0: torch's default)"
    )
    parser.add_argument("--keep-runs", action="store_true", help="keep every run's output folder")
    parser.add_argument("--output", default="outputs/bench")
    args = parser.parse_args()
    args.root = str(Path(args.root).resolve())
    output = Path(args.output).resolve()
    runs_folder = output / "runs"
    shutil.rmtree(runs_folder, ignore_errors=True)
    runs_folder.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("TERM", "xterm-256color")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)

    algorithms = args.algorithms.split(",")
    settings = [s for a in algorithms for s in settings_of(a, args)]
    if args.only:
        settings = [s for s in settings if s.name in {"plain loop", "as shipped", *args.only.split(",")}]
    shapes = {a: run_shape(a, args) for a in algorithms}
    load, code = os.getloadavg(), provenance()  # the code timed is the code at the start
    for round_index in range(args.repeats):
        for pair in schedule(settings, round_index):
            runs = {}
            for setting in pair:
                runs[setting.name] = run = timed_run(
                    setting, round_index, runs_folder, env, shapes, args.keep_runs
                )
                setting.runs.append(run)
                print(
                    f"round {round_index + 1}/{args.repeats} {setting.key:<45} whole {run['whole']:6.2f} s  "
                    f"after imports {run['after_imports']:6.2f} s (CPU {run['cpu_after_imports']:6.2f} s)  "
                    f"task loop {run['task_loop']:6.2f} s",
                    flush=True,
                )
            other = next(s for s in pair if s.name != "as shipped")
            other.pairs.append((runs["as shipped"], runs[other.name]))
    report = {
        "settings": vars(args),
        "data": {
            "root": args.root,
            **{
                f"{split}_images": len(
                    plain_loops.read_idx(Path(args.root) / f"MNIST/raw/{prefix}-labels-idx1-ubyte")
                )
                for split, prefix in (("training", "train"), ("test", "t10k"))
            },
            "run_shape": shapes,
        },
        "tasks": shapes[algorithms[0]]["tasks"],
        "repeats": args.repeats,
        "machine": {
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": load,
            "load_average_at_end": os.getloadavg(),
        },
        "code": code,
        "algorithms": {a: summarise([s for s in settings if s.algorithm == a]) for a in algorithms}
        if args.repeats
        else {},
        "startup": startup(args, env, runs_folder) if args.launches else {},
    }
    from importlib.metadata import version

    report["machine"].update({p: version(p) for p in ("torch", "lightning", "hydra-core")})
    table = markdown(report)
    (output / "results.json").write_text(json.dumps(report, indent=2))
    (output / "results.md").write_text(table)
    print("\n" + table)
    print(f"written {output / 'results.json'} and {output / 'results.md'}")
    flagged = [
        (a, r["setting"]) for a, res in report["algorithms"].items() for r in res["rows"] if r.get("flagged")
    ]
    if flagged:
        print(f"FLAGGED: defaults costing more than {FLAG_SHARE:.0%} of the shipped run: {flagged}")
    failures = {a: r["max_accuracy_difference"] for a, r in report["algorithms"].items()}
    if any(d > 1e-6 for d in failures.values()):
        raise SystemExit(f"the plain loop and clrun disagree on accuracy: {failures}")


if __name__ == "__main__":
    main()
