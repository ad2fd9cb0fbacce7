"""Each task ends with the weights of its best validation epoch, as the HAT reference code does."""

from __future__ import annotations

import copy
import math

from lightning import Callback
from torch import Tensor


class RestoreBestWeights(Callback):
    """Keeps, in memory, the algorithm's weights of the epoch with the best ``monitor`` value of the
    task being trained, and loads them back when the task's training ends.

    The HAT reference code (joansj/hat, ``approaches/hat.py``) keeps the model of the lowest
    validation loss and sets it back after the last epoch; the task's masks, test and everything
    after are computed with that model. The callback hears ``on_train_end`` before the algorithm
    does (Lightning calls callbacks first), so an algorithm's own end-of-task step (HAT recording its
    task's mask) sees the restored weights. Nothing is kept across tasks: a new task starts a new
    record, and a run resumed mid-task trains that task again from its start.

    Args:
        monitor: a metric every algorithm logs under one name in every task (``val/loss``, ``val/acc``).
        mode: ``min`` (a loss) or ``max`` (an accuracy).
    """

    def __init__(self, monitor: str = "val/loss", mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"RestoreBestWeights: mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self._best_state: dict | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.best_value, self.best_epoch, self._best_state = None, None, None

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        # strictly better, as the reference's `valid_loss < best_loss`
        return value < self.best_value if self.mode == "min" else value > self.best_value

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(
                f"RestoreBestWeights monitors {self.monitor!r}, which the algorithm does not log; "
                f"logged: {sorted(trainer.callback_metrics)}"
            )
        value = float(value)
        if self._improves(value):
            self.best_value, self.best_epoch = value, trainer.current_epoch
            self._best_state = {name: _copy(value) for name, value in pl_module.state_dict().items()}

    def on_train_end(self, trainer, pl_module) -> None:
        if self._best_state is not None:
            pl_module.load_state_dict(self._best_state)
        self._best_state = None  # a task's copy is not kept beyond it


def _copy(value):
    """A tensor cloned on its device; a module's extra state (the heads' class lists) deep-copied."""
    return value.detach().clone() if isinstance(value, Tensor) else copy.deepcopy(value)
