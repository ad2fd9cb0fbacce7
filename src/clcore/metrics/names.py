"""The names metrics are logged under: the quantity first, the task last (``train/loss/task_3``).

Loggers group by the leading parts of a name (TensorBoard and W&B make a section of everything
before the first ``/``), so quantity-first names put every task's ``train/loss`` side by side, and
``clcore.loggers.SequenceTensorBoardLogger`` draws them as one chart with a curve per task. The
task is 1-based in names, as everywhere a person reads it.
"""

from __future__ import annotations

import re

_TASK_METRIC = re.compile(r"(?P<quantity>.+)/task_(?P<task>\d+)")


def task_metric(quantity: str, task_id: int) -> str:
    """The logged name of ``quantity`` (``"train/loss"``) for the 0-based ``task_id``: ``train/loss/task_3``."""
    return f"{quantity}/task_{task_id + 1}"


def split_task_metric(name: str) -> tuple[str, int] | None:
    """``"train/loss/task_3"`` -> ``("train/loss", 3)`` (1-based task); None for a name of no task."""
    match = _TASK_METRIC.fullmatch(name)
    return (match["quantity"], int(match["task"])) if match else None
