"""TAK's learning-rate schedules, as multipliers of the base learning rate per optimiser step.

The reference implementation of Porrello et al. (ICLR 2026) offers, per task (``--scheduler_ntk``):

- ``cosine``: linear warm-up over ``warmup_steps`` (500 in the reference), then a cosine decay to 0
  at the task's last optimiser step (the schedule of Ilharco et al.'s task-vector code);
- ``step``: linear warm-up over the first 10% of the steps, then 1, 0.5 from 70% and 0.1 from 90%
  of the steps;
- ``none``: constant.

Steps are optimiser steps, i.e. virtual batches (``virtual_bs_n`` batches each).
"""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("cosine", "step", "none")


def lr_multiplier(schedule: str, total_steps: int, warmup_steps: int = 500) -> Callable[[int], float]:
    """``step -> factor`` for ``torch.optim.lr_scheduler.LambdaLR`` (step counts from 0)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"scheduler must be one of {SCHEDULES}, got {schedule!r}")
    total_steps = max(1, int(total_steps))
    if schedule == "none":
        return lambda step: 1.0
    if schedule == "cosine":
        warmup = max(0, int(warmup_steps))

        def cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        return cosine

    warmup = int(0.1 * total_steps)

    def step_decay(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = step / total_steps
        return 1.0 if progress < 0.7 else 0.5 if progress < 0.9 else 0.1

    return step_decay
