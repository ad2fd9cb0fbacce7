"""Wall time per phase of every task: set-up, training, evaluation."""

from __future__ import annotations

import time

from lightning import Callback


class PhaseTimer(Callback):
    """Records, per task, seconds spent in training (first to last training batch of the fit,
    validation included) and in the test over all seen tasks. ``phases[t]`` holds a dict
    ``{"train": s, "test": s}``; set-up is what remains of the task's wall time.

    Timestamps are host times; on a GPU the test end synchronises through ``compute()``.
    """

    def __init__(self) -> None:
        self.phases: list[dict[str, float]] = []
        self._started = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.phases.append({})
        self._started = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.phases[-1]["train"] = time.perf_counter() - self._started

    def on_test_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()

    def on_test_end(self, trainer, pl_module) -> None:
        if self.phases:
            self.phases[-1]["test"] = self.phases[-1].get("test", 0.0) + time.perf_counter() - self._started

    def totals(self) -> dict[str, float]:
        return {phase: sum(p.get(phase, 0.0) for p in self.phases) for phase in ("train", "test")}
