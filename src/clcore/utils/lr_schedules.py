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

``lr_multiplier`` also offers the reference's other schedules (``--scheduler_ntk``; its
``OptimizerBuilder.build_opt_and_sched`` in ``models/tak_utils/utils.py``, which calls
``cosine_lr(optimizer, base_lr, warmup, steps, min_lr)`` and ``step_lr_decay``):

- ``cosine_plus``: ``cosine_lr`` with a warm-up of ``int(0.1 * steps)`` steps and ``min_lr`` =
  0.1 * base rate, which the reference ADDS to the cosine term: ``min_lr + 0.5 * (1 + cos(pi * e /
  es)) * base_lr``. The rate rises linearly to the base rate, jumps to 1.1 x the base rate on the
  first step after the warm-up and decays to 0.1 x at the last step.
- ``decay``: ``cosine_lr`` with no warm-up and ``min_lr`` = 0, over ``n_epochs * num_batches``:
  the number of BATCHES, not of optimiser steps (the reference does not divide this one by
  ``virtual_bs_n``). With ``virtual_bs_n`` = 1 it decays from the base rate to 0; with k > 1 the
  steps only reach 1 / k of the horizon and the rate ends at ``0.5 * (1 + cos(pi / k))``.
- ``step``: linear warm-up over the first 10% of the steps, then 1, 0.5 from 70% and 0.1 from 90%
  of the steps; ``none``: constant.

``warmup_steps`` is the warm-up of ``cosine`` only; ``cosine_plus``, ``decay`` and ``step`` fix
their own as the reference does. Steps are optimiser steps (for TAK, virtual batches of
``virtual_bs_n`` batches each), counted from 0. Past the last step the cosine schedules hold their
final value (the reference's cosine would climb back); no run steps that far.
"""

from __future__ import annotations

import math
from collections.abc import Callable

SCHEDULES = ("cosine", "cosine_plus", "decay", "step", "none")


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


def _reference_cosine(step: int, total_steps: int, warmup_steps: int, min_factor: float) -> float:
    """The reference's ``cosine_lr`` as a multiplier of the base rate, in its order of operations:
    ``(step + 1) / warmup`` in the warm-up, then ``min + 0.5 * (1 + cos(pi * e / es))``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    e, es = step - warmup_steps, total_steps - warmup_steps
    return min_factor + 0.5 * (1.0 + math.cos(math.pi * min(e, es) / es))


def lr_multiplier(
    schedule: str, total_steps: int, warmup_steps: int = 500, *, total_batches: int | None = None
) -> Callable[[int], float]:
    """``step -> factor`` for ``torch.optim.lr_scheduler.LambdaLR`` (step counts from 0).

    ``total_steps`` is the number of optimiser steps; ``total_batches`` (default: ``total_steps``)
    the number of batches they consume, the horizon of ``decay`` (module docstring).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"scheduler must be one of {SCHEDULES}, got {schedule!r}")
    total_steps = max(1, int(total_steps))
    if schedule == "none":
        return lambda step: 1.0
    if schedule == "cosine":
        return lambda step: warmup_cosine(step, total_steps, warmup_steps)
    if schedule == "cosine_plus":
        warmup = int(0.1 * total_steps)  # < total_steps: the cosine part has at least one step
        return lambda step: _reference_cosine(step, total_steps, warmup, 0.1)
    if schedule == "decay":
        horizon = max(1, int(total_batches if total_batches is not None else total_steps))
        return lambda step: _reference_cosine(step, horizon, 0, 0.0)

    warmup = int(0.1 * total_steps)

    def step_decay(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = step / total_steps
        return 1.0 if progress < 0.7 else 0.5 if progress < 0.9 else 0.1

    return step_decay
