"""The CPU-sized TAK study: TAK versus linear and standard fine-tuning under the same merge.

Every run is ``clrun experiment=tak_small_mnist <overrides> seed=<s>``, composed in this one
process (start-up is paid once; the command lines are printed and stored in results.json). Each
writes outputs/tak_small/<run>/seed_<s>/; this script reads their summaries and alpha sweeps and
measures what the penalty is meant to remove, the interference of one task's vector with the
other tasks' features:

    interference = mean over ordered task pairs s != t of  E_{x in task t's test set} || z(x; tau_s) - z(x; 0) ||^2

with z the normalised features of theta_0 + tau_s (linearised for tangent runs). For the plain
linear fine-tuning vectors it also reports the KFAC penalty R(tau_t) that TAK would have charged
(Eq. 8, the other tasks' factors, without lambda), divided by T - 1 so that it estimates the same
mean as the measured interference (Eq. 8 sums the other tasks' output factors).

    python experiments/tak_small/pretrain.py           # theta_0 and its head, once
    python experiments/tak_small/run_study.py          # 8 runs x 3 seeds (a few minutes on 2 cores)
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
FISHER_CACHE = Path("data/tak_small/fisher_cache")
QUIET = ["trainer.enable_progress_bar=false", "callbacks=none", "logger=[]", "resume=false"]

# name, what it is, overrides of experiment=tak_small_mnist
RUNS = [
    (
        "standard_ft",
        "standard fine-tuning (non-linear), no penalty",
        ["algorithm.tangent=false", "algorithm.reg_lambda=0"],
    ),
    ("linear_ft", "linear (tangent) fine-tuning, no penalty", ["algorithm.reg_lambda=0"]),
    ("tak_lambda1", "TAK, lambda 1", ["algorithm.reg_lambda=1"]),
    ("tak_lambda10", "TAK, lambda 10 (the experiment's default)", ["algorithm.reg_lambda=10"]),
    ("tak_lambda50", "TAK, lambda 50", ["algorithm.reg_lambda=50"]),
    ("tak_lambda500", "TAK, lambda 500 (the paper's default)", ["algorithm.reg_lambda=500"]),
    (
        "tak_lambda10_past_only",
        "TAK, lambda 10, only tasks already seen regularise",
        ["algorithm.reg_lambda=10", "algorithm.fisher_future_tasks=false"],
    ),
    (
        "tak_nonlinear_lambda10",
        "TAK without linearisation, lambda 10",
        ["algorithm.reg_lambda=10", "algorithm.tangent=false"],
    ),
]
METRICS = (
    "merged_accuracy_alpha_1",
    "merged_accuracy_best_alpha",
    "best_alpha",
    "single_task_accuracy",
    "interference",
    "factor_seconds",
    "run_seconds",
)


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


def best_alpha(sweep_csv: Path) -> tuple[float, float]:
    with open(sweep_csv) as stream:
        best = max(csv.DictReader(stream), key=lambda row: float(row["average_accuracy"]))
    return float(best["alpha"]), float(best["average_accuracy"])


def one_run(name: str, overrides: list[str], seed: int) -> dict:
    output_dir = OUTPUTS / name / f"seed_{seed}"
    overrides = [*overrides, f"seed={seed}", "callbacks.tak_outputs.save_task_vectors=true"]
    command = f"clrun experiment=tak_small_mnist {' '.join(overrides)} hydra.run.dir={output_dir}"
    print(f"== {command}", flush=True)
    cfg = compose_run(overrides, output_dir)
    started = time.perf_counter()
    results = run_sequence(cfg)
    seconds = time.perf_counter() - started
    summary = results.summary()
    alpha, alpha_accuracy = best_alpha(output_dir / "results" / "alpha_sweep.csv")
    return {
        "command": command,
        "merged_accuracy_alpha_1": summary["average_accuracy"],
        "merged_accuracy_per_task": results.acc_matrix[-1].tolist(),
        "best_alpha": alpha,
        "merged_accuracy_best_alpha": alpha_accuracy,
        "single_task_accuracy": statistics.mean(summary["single_task_accuracy"]),
        "interference": interference(cfg, output_dir),
        "factor_seconds": sum(summary["fisher_seconds"]),
        "run_seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    if not Path("data/tak_small/mlp_theta0.pt").is_file():
        raise SystemExit("theta_0 missing: run python experiments/tak_small/pretrain.py first")
    torch.set_num_threads(2)
    shutil.rmtree(FISHER_CACHE, ignore_errors=True)  # the first TAK run of each seed times the factors
    runs = {name: {"description": description, "per_seed": {}} for name, description, _ in RUNS}
    for seed in args.seeds:
        for name, _, overrides in RUNS:
            runs[name]["per_seed"][seed] = one_run(name, overrides, seed)
            print(
                json.dumps({k: v for k, v in runs[name]["per_seed"][seed].items() if k != "command"}),
                flush=True,
            )
    estimates = {seed: kfac_estimate(seed, OUTPUTS / "linear_ft" / f"seed_{seed}") for seed in args.seeds}
    for run in runs.values():
        run["mean"] = {m: statistics.mean(r[m] for r in run["per_seed"].values()) for m in METRICS}
        run["std"] = {m: statistics.pstdev(r[m] for r in run["per_seed"].values()) for m in METRICS}
    report = {"seeds": args.seeds, "runs": runs, "kfac_estimate_linear_ft": estimates}
    (HERE / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n" + table(runs))
    measured = statistics.mean(r["interference"] for r in runs["linear_ft"]["per_seed"].values())
    print(
        f"\nlinear FT vectors: KFAC estimate R/(T-1) = {statistics.mean(estimates.values()):.3f}, measured interference = {measured:.3f}"
    )


def table(runs: dict) -> str:
    def cell(run: dict, metric: str, scale: float = 100.0, digits: int = 1) -> str:
        return f"{scale * run['mean'][metric]:.{digits}f} ± {scale * run['std'][metric]:.{digits}f}"

    lines = [
        "| run | merged acc. (alpha 1) | merged acc. (best alpha) | best alpha | single-task acc. | interference | factor s | run s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        lines.append(
            f"| {name} | {cell(run, 'merged_accuracy_alpha_1')} | {cell(run, 'merged_accuracy_best_alpha')} | {cell(run, 'best_alpha', 1, 2)} "
            f"| {cell(run, 'single_task_accuracy')} | {cell(run, 'interference', 1, 3)} | {run['mean']['factor_seconds']:.1f} | {run['mean']['run_seconds']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
