"""The CPU-sized TAK study: TAK versus linear and standard fine-tuning under the same merge.

Every run is ``clrun experiment=tak_small_mnist <overrides> seed=<s>``, composed in this one
process (start-up is paid once; the command lines are printed and stored in results.json).

1. **Selection pass, validation images only.** TAK (tangent, future tasks' factors) for every
   lambda of ``SELECTION_LAMBDAS`` with ``benchmark.eval_split=val``: the accuracy matrix, the
   single-task accuracies and the final alpha sweep are measured on each task's held-out 10% of the
   training images, never on test images. The chosen lambda has the best validation merged accuracy
   at alpha 1 (mean over the seeds); the chosen alpha is the best point of that lambda's validation
   alpha sweep, averaged over the seeds. Runs write outputs/tak_small/selection/<run>/seed_<s>/.
2. **Test pass.** The table's runs (``table_runs``: standard and linear fine-tuning, TAK at
   ``TABLE_LAMBDAS`` and at the chosen lambda, and the two variants at the chosen lambda) on the
   test images, writing outputs/tak_small/<run>/seed_<s>/. For the chosen lambda, the alpha column
   is the test accuracy at the validation-chosen alpha; for the other runs it is the best alpha of
   the test sweep (what the reference code reports: an optimistic upper bound).

This script then measures what the penalty is meant to remove, the interference of one task's
vector with the other tasks' features:

    interference = mean over ordered task pairs s != t of  E_{x in task t's test set} || z(x; tau_s) - z(x; 0) ||^2

with z the normalised features of theta_0 + tau_s (linearised for tangent runs). For the plain
linear fine-tuning vectors it also reports the KFAC penalty R(tau_t) that TAK would have charged
(Eq. 8, the other tasks' factors, without lambda), divided by T - 1 so that it estimates the same
mean as the measured interference (Eq. 8 sums the other tasks' output factors).

    python experiments/tak_small/pretrain.py           # theta_0 and its head, once
    python experiments/tak_small/run_study.py          # (9 + 9) runs x 3 seeds (about 5-6 min on 2 quiet cores)
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from clcore.clrun.construction import build
from clcore.clrun.task_loop import run_sequence

HERE = Path(__file__).resolve().parent
OUTPUTS = Path("outputs/tak_small")
SELECTION_OUTPUTS = OUTPUTS / "selection"
FISHER_CACHE = Path("data/tak_small/fisher_cache")
QUIET = ["trainer.enable_progress_bar=false", "callbacks=none", "logger=[]", "resume=false"]

SELECTION_LAMBDAS = (0.03, 0.1, 0.3, 1, 3, 10, 30, 50, 500)  # chosen on validation images
TABLE_LAMBDAS = (1, 10, 50, 500)  # the test table's TAK rows, plus the chosen lambda
METRICS = (
    "merged_accuracy_alpha_1",
    "merged_accuracy_best_alpha",
    "best_alpha",
    "single_task_accuracy",
    "interference",
    "factor_seconds",
    "run_seconds",
)
SELECTION_METRICS = (
    "merged_accuracy_alpha_1",
    "merged_accuracy_best_alpha",
    "best_alpha",
    "single_task_accuracy",
    "factor_seconds",
    "run_seconds",
)


def table_runs(chosen: float) -> list[tuple[str, str, list[str]]]:
    """(name, what it is, overrides of experiment=tak_small_mnist) of the test table."""
    runs = [
        (
            "standard_ft",
            "standard fine-tuning (non-linear), no penalty",
            ["algorithm.tangent=false", "algorithm.reg_lambda=0"],
        ),
        ("linear_ft", "linear (tangent) fine-tuning, no penalty", ["algorithm.reg_lambda=0"]),
    ]
    for lam in sorted({*TABLE_LAMBDAS, chosen}):
        notes = [
            note
            for flag, note in ((lam == chosen, "chosen on validation"), (lam == 500, "the paper's default"))
            if flag
        ]
        description = f"TAK, lambda {lam}" + (f" ({', '.join(notes)})" if notes else "")
        runs.append((f"tak_lambda{lam}", description, [f"algorithm.reg_lambda={lam}"]))
    runs += [
        (
            f"tak_lambda{chosen}_past_only",
            f"TAK, lambda {chosen}, only tasks already seen regularise",
            [f"algorithm.reg_lambda={chosen}", "algorithm.fisher_future_tasks=false"],
        ),
        (
            f"tak_nonlinear_lambda{chosen}",
            f"TAK without linearisation, lambda {chosen}",
            [f"algorithm.reg_lambda={chosen}", "algorithm.tangent=false"],
        ),
    ]
    return runs


def compose_run(overrides: list[str], output_dir: Path):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="clcore.configs", version_base="1.3"):
        return compose(
            config_name="config",
            overrides=[*QUIET, "experiment=tak_small_mnist", *overrides, f"paths.output_dir={output_dir}"],
        )


def saved_vectors(output_dir: Path, num_tasks: int) -> list[dict[str, torch.Tensor]]:
    return [
        torch.load(output_dir / "task_vectors" / f"task_{t + 1}.pt", weights_only=True)["vector"]
        for t in range(num_tasks)
    ]


@torch.no_grad()
def interference(cfg, output_dir: Path) -> float:
    """Mean over ordered task pairs s != t of the squared change of task t's test features under tau_s alone."""
    benchmark, algorithm = build(cfg)
    vectors = saved_vectors(output_dir, benchmark.num_tasks)
    changes = []
    for task in range(benchmark.num_tasks):
        x = benchmark.prepare_batch(benchmark.task_split("test", task).images, task)
        base = algorithm.features(x, None)
        changes += [
            float((algorithm.features(x, vectors[s]) - base).pow(2).sum(-1).mean())
            for s in range(benchmark.num_tasks)
            if s != task
        ]
    return sum(changes) / len(changes)


def kfac_estimate(seed: int, vectors_dir: Path) -> float:
    """Mean over tasks t of R(tau_t) / (T - 1): TAK's Eq. 8 penalty (no lambda) of the linear-FT vectors."""
    cfg = compose_run([f"seed={seed}", "algorithm.reg_lambda=1"], OUTPUTS / "kfac_estimate")
    benchmark, algorithm = build(cfg)
    vectors = saved_vectors(vectors_dir, benchmark.num_tasks)
    values = []
    for task in range(benchmark.num_tasks):
        algorithm.curvature = algorithm._prepare_curvature(benchmark, task)  # from the cache
        algorithm.weight_delta.load_full(vectors[task])
        values.append(float(algorithm.regularization_loss().detach()) / (benchmark.num_tasks - 1))
    return sum(values) / len(values)


def alpha_sweep(sweep_csv: Path) -> dict[str, float]:
    """alpha (as the CSV writes it) -> merged accuracy averaged over the tasks."""
    with open(sweep_csv) as stream:
        return {row["alpha"]: float(row["average_accuracy"]) for row in csv.DictReader(stream)}


def one_run(name: str, overrides: list[str], seed: int, root: Path, measure: bool = True) -> dict:
    output_dir = root / name / f"seed_{seed}"
    overrides = [*overrides, f"seed={seed}", "callbacks.tak_outputs.save_task_vectors=true"]
    command = f"clrun experiment=tak_small_mnist {' '.join(overrides)} hydra.run.dir={output_dir}"
    print(f"== {command}", flush=True)
    cfg = compose_run(overrides, output_dir)
    started = time.perf_counter()
    results = run_sequence(cfg)
    seconds = time.perf_counter() - started
    summary = results.summary()
    sweep = alpha_sweep(output_dir / "results" / "alpha_sweep.csv")
    alpha = max(sweep, key=sweep.get)
    record = {
        "command": command,
        "merged_accuracy_alpha_1": summary["average_accuracy"],
        "merged_accuracy_per_task": results.acc_matrix[-1].tolist(),
        "best_alpha": float(alpha),
        "merged_accuracy_best_alpha": sweep[alpha],
        "alpha_sweep": sweep,
        "single_task_accuracy": statistics.mean(summary["single_task_accuracy"]),
        "factor_seconds": sum(summary["fisher_seconds"]),
        "run_seconds": seconds,
    }
    if measure:
        record["interference"] = interference(cfg, output_dir)
    print(
        json.dumps({k: v for k, v in record.items() if k not in ("command", "alpha_sweep")}),
        flush=True,
    )
    return record


def aggregate(run: dict, metrics: tuple[str, ...]) -> None:
    per_seed = run["per_seed"].values()
    run["mean"] = {m: statistics.mean(r[m] for r in per_seed) for m in metrics}
    run["std"] = {m: statistics.pstdev(r[m] for r in per_seed) for m in metrics}


def mean_sweep(run: dict) -> dict[str, float]:
    alphas = next(iter(run["per_seed"].values()))["alpha_sweep"]
    return {a: statistics.mean(r["alpha_sweep"][a] for r in run["per_seed"].values()) for a in alphas}


def selection_pass(seeds: list[int]) -> dict:
    """TAK at every lambda of SELECTION_LAMBDAS, measured on the validation images only."""
    shutil.rmtree(FISHER_CACHE, ignore_errors=True)  # the first run of each seed times the factors
    runs = {
        lam: {"description": f"TAK, lambda {lam}, validation images", "per_seed": {}}
        for lam in SELECTION_LAMBDAS
    }
    for seed in seeds:
        for lam in SELECTION_LAMBDAS:
            overrides = [f"algorithm.reg_lambda={lam}", "benchmark.eval_split=val"]
            runs[lam]["per_seed"][seed] = one_run(
                f"tak_lambda{lam}", overrides, seed, SELECTION_OUTPUTS, measure=False
            )
    for run in runs.values():
        aggregate(run, SELECTION_METRICS)
        run["mean_alpha_sweep"] = mean_sweep(run)
    chosen = max(SELECTION_LAMBDAS, key=lambda lam: runs[lam]["mean"]["merged_accuracy_alpha_1"])
    sweep = runs[chosen]["mean_alpha_sweep"]
    alpha = max(sweep, key=sweep.get)
    return {
        "split": "val (10% of each task's training images, held out by the seed)",
        "criterion": "best mean over seeds of the validation merged accuracy at alpha 1; alpha: best point of "
        "the chosen lambda's validation alpha sweep averaged over seeds",
        "runs": {str(lam): run for lam, run in runs.items()},
        "chosen_lambda": chosen,
        "chosen_alpha": alpha,
        "chosen_alpha_validation_accuracy": sweep[alpha],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the study's machine: 2 cores)")
    args = parser.parse_args()
    if not Path("data/tak_small/mlp_theta0.pt").is_file():
        raise SystemExit("theta_0 missing: run python experiments/tak_small/pretrain.py first")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    selection = selection_pass(args.seeds)
    chosen, chosen_alpha = selection["chosen_lambda"], selection["chosen_alpha"]
    print("\n" + selection_table(selection) + "\n", flush=True)

    shutil.rmtree(FISHER_CACHE, ignore_errors=True)  # the test pass times the factors again
    runs = {name: {"description": description, "per_seed": {}} for name, description, _ in table_runs(chosen)}
    for seed in args.seeds:
        for name, _, overrides in table_runs(chosen):
            runs[name]["per_seed"][seed] = one_run(name, overrides, seed, OUTPUTS)
    chosen_run = runs[f"tak_lambda{chosen}"]
    for record in chosen_run["per_seed"].values():
        record["merged_accuracy_validation_alpha"] = record["alpha_sweep"][chosen_alpha]
    chosen_run["validation_alpha"] = float(chosen_alpha)
    for run in runs.values():
        aggregate(run, METRICS)
    chosen_run["mean"]["merged_accuracy_validation_alpha"] = statistics.mean(
        r["merged_accuracy_validation_alpha"] for r in chosen_run["per_seed"].values()
    )
    chosen_run["std"]["merged_accuracy_validation_alpha"] = statistics.pstdev(
        r["merged_accuracy_validation_alpha"] for r in chosen_run["per_seed"].values()
    )

    estimates = {seed: kfac_estimate(seed, OUTPUTS / "linear_ft" / f"seed_{seed}") for seed in args.seeds}
    report = {
        "seeds": args.seeds,
        "threads": args.threads,
        "selection": selection,
        "runs": runs,
        "kfac_estimate_linear_ft": estimates,
        "total_seconds": time.perf_counter() - started,
    }
    (HERE / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(selection_table(selection))
    print("\n" + table(runs, chosen))
    measured = statistics.mean(r["interference"] for r in runs["linear_ft"]["per_seed"].values())
    print(
        f"\nlinear FT vectors: KFAC estimate R/(T-1) = {statistics.mean(estimates.values()):.3f}, measured interference = {measured:.3f}"
    )
    print(f"total: {report['total_seconds']:.0f} s")


def cell(run: dict, metric: str, scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * run['mean'][metric]:.{digits}f} ± {scale * run['std'][metric]:.{digits}f}"


def selection_table(selection: dict) -> str:
    lines = [
        "| lambda | val. merged acc. (alpha 1) | val. merged acc. (best alpha) | best alpha | val. single-task acc. |",
        "|---|---|---|---|---|",
    ]
    for lam, run in selection["runs"].items():
        mark = "**" if float(lam) == selection["chosen_lambda"] else ""
        lines.append(
            f"| {mark}{lam}{mark} | {mark}{cell(run, 'merged_accuracy_alpha_1')}{mark} | {cell(run, 'merged_accuracy_best_alpha')} "
            f"| {cell(run, 'best_alpha', 1, 2)} | {cell(run, 'single_task_accuracy')} |"
        )
    lines.append(
        f"\nchosen: lambda {selection['chosen_lambda']}, alpha {selection['chosen_alpha']} "
        f"(validation merged accuracy of the seed-averaged sweep there: {100 * selection['chosen_alpha_validation_accuracy']:.1f})"
    )
    return "\n".join(lines)


def table(runs: dict, chosen: float) -> str:
    lines = [
        "| run | merged acc. (alpha 1) | merged acc. (alpha) | alpha | single-task acc. | interference | factor s | run s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        if name == f"tak_lambda{chosen}":
            label = f"**{name}** (lambda chosen on val.)"
            at_alpha = f"**{cell(run, 'merged_accuracy_validation_alpha')}**"
            alpha = f"{run['validation_alpha']:.2f} (val.)"
        else:
            label, at_alpha, alpha = (
                name,
                cell(run, "merged_accuracy_best_alpha"),
                cell(run, "best_alpha", 1, 2) + " (test)",
            )
        lines.append(
            f"| {label} | {cell(run, 'merged_accuracy_alpha_1')} | {at_alpha} | {alpha} "
            f"| {cell(run, 'single_task_accuracy')} | {cell(run, 'interference', 1, 3)} | {run['mean']['factor_seconds']:.1f} | {run['mean']['run_seconds']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
