"""Avalanche 0.6 side of ``make bench-peers``: Naive (finetuning) on 10-task Permuted MNIST.

Run with the Avalanche venv's Python (``setup.sh`` makes it), never clcore's::

    ~/.cache/clcore-peers/avalanche-0.6.0/bin/python avalanche_naive.py --root data/mnist-from-test --out run.json

The same run as ``clrun experiment=finetuning_pmnist trainer.max_epochs=1``, written the way
Avalanche's examples write it: its ``PermutedMNIST`` benchmark on the local torchvision files
(``<root>/MNIST/raw/``, never downloaded), a 784-256-100 MLP with 64-d features (ReLU after each
layer, as clcore's ``MLP``) and one head per task (TIL, task labels given), Adam 1e-3, batch 128,
1 epoch, then a test on all seen tasks after each task. One difference: no validation split (see
``main``), so each task trains on all 8,000 training images where clcore holds out 10% (7,200). Avalanche's
default evaluator (accuracy and loss metrics, its interactive logger) stays on.
Writes wall time, train time, train samples/s and the final average accuracy as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

STARTED = time.perf_counter()

import torch  # noqa: E402
from avalanche.benchmarks.classic import PermutedMNIST  # noqa: E402
from avalanche.models import MultiHeadClassifier, MultiTaskModule  # noqa: E402
from avalanche.training.plugins import SupervisedPlugin  # noqa: E402
from avalanche.training.supervised import Naive  # noqa: E402
from torch import nn  # noqa: E402


class MultiHeadMLP(MultiTaskModule):
    """784-256-100-64 MLP (ReLU after every layer) and one linear head per task."""

    def __init__(self, input_dim: int = 784, hidden_dims=(256, 100), output_dim: int = 64) -> None:
        super().__init__()
        dims = [input_dim, *hidden_dims, output_dim]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = MultiHeadClassifier(output_dim)

    def forward(self, x, task_labels):
        return self.classifier(self.features(x), task_labels)


class TrainTimer(SupervisedPlugin):
    """Training seconds (epoch start to the end of its last iteration) and samples, over all tasks."""

    def __init__(self) -> None:
        super().__init__()
        self.train_seconds, self.train_samples = 0.0, 0
        self._epoch_started = self._last_iteration_end = 0.0

    def before_training_epoch(self, strategy, **kwargs) -> None:
        self._epoch_started = self._last_iteration_end = time.perf_counter()

    def after_training_iteration(self, strategy, **kwargs) -> None:
        self._last_iteration_end = time.perf_counter()
        self.train_samples += len(strategy.mb_y)

    def after_training_epoch(self, strategy, **kwargs) -> None:
        self.train_seconds += self._last_iteration_end - self._epoch_started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="folder holding MNIST/raw/")
    parser.add_argument("--out", required=True, help="JSON file for the measurements")
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--eval-batch-size", type=int, default=4096, help="clcore's eval_batch_size")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    benchmark = PermutedMNIST(
        n_experiences=args.tasks, return_task_id=True, seed=args.seed, dataset_root=args.root
    )
    # No validation split: in 0.6, benchmark_with_validation_stream's experiences carry no task labels
    # and MultiHeadClassifier's adaptation fails on them (AttributeError, then IndexError on a set).
    train_stream, test_stream = benchmark.train_stream, benchmark.test_stream
    model = MultiHeadMLP()
    timer = TrainTimer()
    strategy = Naive(
        model=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        criterion=nn.CrossEntropyLoss(),
        train_mb_size=128,
        train_epochs=1,
        eval_mb_size=args.eval_batch_size,
        device="cpu",
        plugins=[timer],
    )
    test_started = 0.0
    test_seconds = 0.0
    for task, experience in enumerate(train_stream):
        strategy.train(experience)
        test_started = time.perf_counter()
        results = strategy.eval(test_stream[: task + 1])
        test_seconds += time.perf_counter() - test_started
    accuracies = [
        results[f"Top1_Acc_Exp/eval_phase/test_stream/Task{t:03d}/Exp{t:03d}"] for t in range(args.tasks)
    ]
    report = {
        "peer": "avalanche-lib 0.6.0",
        "algorithm": "naive",
        "torch": torch.__version__,
        "train_seconds": timer.train_seconds,
        "train_samples": timer.train_samples,
        "train_samples_per_s": timer.train_samples / timer.train_seconds,
        "test_seconds": test_seconds,
        "final_accuracies": accuracies,
        "final_average_accuracy": sum(accuracies) / len(accuracies),
        "in_process_seconds": time.perf_counter() - STARTED,
    }
    with open(args.out, "w") as stream:
        json.dump(report, stream, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "final_accuracies"}))


if __name__ == "__main__":
    main()
