"""``ContinualResults``: the accuracy matrix of a run, its summary, and its files."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from clcore.metrics.continual import average_accuracy, backward_transfer, forgetting, forward_transfer


def _nan(n: int, m: int | None = None) -> Tensor:
    return torch.full((n,) if m is None else (n, m), float("nan"), dtype=torch.float64)


@dataclass
class ContinualResults:
    """Everything a run has measured so far. Accuracies are fractions in [0, 1]."""

    num_tasks: int
    acc_matrix: Tensor = field(default=None)  # [T, T], R[i, j], NaN where not measured
    acc_before_training: Tensor = field(default=None)  # [T], R[j-1, j] (zero-shot evaluation)
    acc_untrained: Tensor = field(default=None)  # [T], b_j
    tasks_done: int = 0
    extra: dict = field(default_factory=dict)  # per-task scalars from algorithms, e.g. HAT capacity

    def __post_init__(self) -> None:
        if self.acc_matrix is None:
            self.acc_matrix = _nan(self.num_tasks, self.num_tasks)
        if self.acc_before_training is None:
            self.acc_before_training = _nan(self.num_tasks)
        if self.acc_untrained is None:
            self.acc_untrained = _nan(self.num_tasks)

    def record_row(self, task_id: int, accuracies: Tensor) -> None:
        """Row ``task_id`` of R from a per-task accuracy vector (entries j <= task_id are used)."""
        row = accuracies.detach().to(torch.float64).cpu()
        if torch.isnan(row[: task_id + 1]).any():
            missing = [j + 1 for j in range(task_id + 1) if math.isnan(row[j])]
            raise RuntimeError(f"after task {task_id + 1}: no test accuracy for task(s) {missing}")
        self.acc_matrix[task_id, : task_id + 1] = row[: task_id + 1]
        self.tasks_done = max(self.tasks_done, task_id + 1)

    def record_extra(self, task_id: int, name: str, value: float) -> None:
        self.extra.setdefault(name, [math.nan] * self.num_tasks)[task_id] = float(value)

    @property
    def trained(self) -> Tensor:
        """The part of R measured so far: [tasks_done, tasks_done]."""
        return self.acc_matrix[: self.tasks_done, : self.tasks_done]

    def summary(self) -> dict:
        """Average accuracy per step, final AA, BWT, forgetting per task (and FWT if measured)."""
        R = self.trained
        k = self.tasks_done
        aa = average_accuracy(R).tolist() if k else []
        f = forgetting(R).tolist() if k else []
        out = {
            "num_tasks": self.num_tasks,
            "tasks_done": k,
            "average_accuracy": aa[-1] if aa else None,
            "average_accuracy_per_task": aa,
            "bwt": _finite_or_none(backward_transfer(R)) if k else None,
            "forgetting_per_task": f,
            "average_forgetting": sum(f) / len(f) if f else None,
        }
        if k > 1 and not torch.isnan(self.acc_before_training[1:k]).any():
            out["fwt"] = forward_transfer(R, self.acc_before_training[:k], self.acc_untrained[:k])
            # task 1 has no "before training" evaluation (nothing precedes it): null in JSON
            out["accuracy_before_training"] = _nan_to_none(self.acc_before_training[:k].tolist())
            out["accuracy_untrained"] = _nan_to_none(self.acc_untrained[:k].tolist())
        for name, values in self.extra.items():
            out[name] = values[:k]
        return out

    def acc_matrix_csv(self) -> str:
        """``after_task,task_1,...,task_T``; one row per trained task; empty cells where j > i."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["after_task", *[f"task_{j + 1}" for j in range(self.num_tasks)]])
        for i in range(self.tasks_done):
            cells = [
                "" if j > i or math.isnan(v) else f"{v:.6f}"
                for j, v in enumerate(self.acc_matrix[i].tolist())
            ]
            writer.writerow([i + 1, *cells])
        return buffer.getvalue()

    def state_dict(self) -> dict:
        return {
            "num_tasks": self.num_tasks,
            "acc_matrix": self.acc_matrix.clone(),
            "acc_before_training": self.acc_before_training.clone(),
            "acc_untrained": self.acc_untrained.clone(),
            "tasks_done": self.tasks_done,
            "extra": {k: list(v) for k, v in self.extra.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> ContinualResults:
        return cls(**state)


def _nan_to_none(values: list[float]) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values]


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value
