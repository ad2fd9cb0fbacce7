"""clcore: continual learning and task arithmetic on Lightning + Hydra.

The public API is importable from here and from each package's root (``clcore.algorithms``,
``clcore.task_arithmetic``, ...); those names stay when modules move. They load lazily, on first
use, so ``import clcore.task_arithmetic`` still imports neither Lightning nor Hydra:

    from clcore import compose, run_sequence, average_accuracy
    cfg = compose(["experiment=hat_pmnist", "benchmark.root=data/mnist-from-test"])
    results = run_sequence(cfg)
    print(average_accuracy(results.acc_matrix))

Task ids are 0-based inside the code and 1-based in everything a user reads
(file headers, logged metric names, plots), matching the papers.
"""

from __future__ import annotations

from clcore.utils.lazy_exports import lazy_exports

__version__ = "0.1.0"

# public name -> the package that exports it
_EXPORTS = {
    # the clrun application: the task loop as a function, and composing its config
    **dict.fromkeys(["run_sequence", "build", "compose", "preflight"], "clcore.clrun"),
    "ConfigError": "clcore.config_rules",
    # the clta application
    "run_protocol": "clcore.clta",
    # the library
    **dict.fromkeys(
        [
            *("CLAlgorithm", "Finetuning", "Fix", "HAT", "TAK"),
            *("EWC", "OnlineEWC", "SI", "MAS", "L2", "LwF", "Joint", "Independent", "Random"),
        ],
        "clcore.algorithms",
    ),
    **dict.fromkeys(
        ["CLBackbone", "MLP", "ResNet18", "HATMaskBackbone", "HATMaskMLP", "HATMaskResNet18"],
        "clcore.backbones",
    ),
    **dict.fromkeys(["CLHeads", "HeadsTIL", "HeadsCIL", "HeadDIL", "ZeroShotHead"], "clcore.heads"),
    **dict.fromkeys(
        ["CLBenchmark", "PermutedBenchmark", "SplitBenchmark", "RotatedBenchmark", "DataNotFoundError"],
        "clcore.benchmarks",
    ),
    **dict.fromkeys(
        [
            "ContinualResults",
            "TaskAccuracy",
            "top1_accuracy",
            "average_accuracy",
            "backward_transfer",
            "forward_transfer",
            "forgetting",
        ],
        "clcore.metrics",
    ),
    "CLCallback": "clcore.callbacks",
    **dict.fromkeys(
        ["TaskVector", "LinearTaskVector", "LinearizedModel", "merge", "ATLASModel", "fit_atlas"],
        "clcore.task_arithmetic",
    ),
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
