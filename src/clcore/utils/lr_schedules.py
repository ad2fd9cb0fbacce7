"""Learning-rate schedules, shared by TAK and by ``clta``'s fine-tuning.

``warmup_cosine`` is the schedule of Ilharco et al.'s task-vector code (``cosine_lr`` in their
``src/utils.py``; ICLR 2023, App. B), which the reference implementation of TAK (Porrello et al.,
ICLR 2026, ``--scheduler_ntk cosine``) calls too: a linear warm-up to the base rate over
``warmup_steps``, then a cosine decay to 0 at the last step. The reference assigns
``base_lr * (step + 1) / warmup`` and ``0.5 * (1 + cos(pi * e / es)) * base_lr`` to the optimiser
each step. Two users, one formula, two roundings of it:

- ``clta`` sets the rate itself, ``warmup_cosine(step, ..., base_lr=lr)``: the reference's order
  of operations in the warm-up;
- TAK hands ``lr_multiplier("cosine", ...)`` (``base_lr`` = 1) to ``LambdaLR``, which multiplies
  the factor by the base rate: ``lr * ((step + 1) / warmup)``.

The two may differ in the last bit of a warm-up step's rate, and both compute ``pi * (e / es)``
where the reference has ``pi * e / es`` (again the last bit at most). Both are kept as they are:
every recorded result of TAK and of ``clta`` was produced with them.

``lr_multiplier`` also offers TAK's other schedules: ``step`` (linear warm-up over the first 10%
of the steps, then 1, 0.5 from 70% and 0.1 from 90% of the steps) and ``none`` (constant).
Steps are optimiser steps (for TAK, virtual batches of ``virtual_bs_n`` batches each).
"""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("cosine", "step", "none")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base_lr: float = 1.0) -> float:
    """The rate at ``step`` (from 0): linear warm-up to ``base_lr``, then cosine decay to 0 at ``total_steps``.

    Held at 0 past ``total_steps``. With the default ``base_lr`` = 1 it is a multiplier of the base rate.
    """
    total_steps, warmup_steps = max(1, int(total_steps)), max(0, int(warmup_steps))
    if step < warmup_steps:
        # base_lr * (step + 1) first, then / warmup_steps, as the reference rounds it.
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))) * base_lr


def lr_multiplier(schedule: str, total_steps: int, warmup_steps: int = 500) -> Callable[[int], float]:
    """``step -> factor`` for ``torch.optim.lr_scheduler.LambdaLR`` (step counts from 0)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"scheduler must be one of {SCHEDULES}, got {schedule!r}")
    total_steps = max(1, int(total_steps))
    if schedule == "none":
        return lambda step: 1.0
    if schedule == "cosine":
        return lambda step: warmup_cosine(step, total_steps, warmup_steps)

    warmup = int(0.1 * total_steps)

    def step_decay(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = step / total_steps
        return 1.0 if progress < 0.7 else 0.5 if progress < 0.9 else 0.1

    return step_decay
