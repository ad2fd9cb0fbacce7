"""Stop a task's training once a decaying learning rate falls below a floor (the HAT reference's ``lr_min``)."""

from __future__ import annotations

from lightning import Callback


class StopBelowLearningRate(Callback):
    """Ends the task's training at the start of the first epoch whose learning rate is below
    ``min_lr``: the HAT reference code divides the rate by 3 on a validation plateau and stops the
    task when it falls under ``lr_min = 1e-4`` (``approaches/hat.py``), so ``max_epochs`` is only an
    upper bound. Pair it with a decaying schedule (``lr_scheduler=plateau``).

    Checked at an epoch's start because the schedule is stepped after every epoch-end hook; the
    first optimiser's first parameter group is read (clcore builds one optimiser per task).

    Args:
        min_lr: the floor; training stops when the rate is strictly below it.
    """

    def __init__(self, min_lr: float = 1e-4) -> None:
        if not min_lr > 0:
            raise ValueError(f"StopBelowLearningRate: min_lr must be > 0, got {min_lr!r}")
        self.min_lr = min_lr
        self.stopped_at_epoch: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.stopped_at_epoch = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.optimizers and trainer.optimizers[0].param_groups[0]["lr"] < self.min_lr:
            self.stopped_at_epoch = trainer.current_epoch
            trainer.should_stop = True
