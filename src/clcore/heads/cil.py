"""Class-incremental head: one head over every class seen so far (task id unknown at test)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clcore.heads.base import CLHeads


class HeadsCIL(CLHeads):
    """A single linear head that grows by ``num_classes`` outputs per new task.

    It is stored as one ``Linear`` block per task and concatenated: mathematically one linear
    layer over all seen classes, but earlier blocks keep their parameter identity (no copying,
    optimizers and hooks stay valid). The task id passed to ``forward`` is ignored on purpose.
    """

    paradigm = "cil"

    def __init__(self, input_dim: int) -> None:
        super().__init__(input_dim)
        self.blocks = nn.ModuleList()

    def _grow(self, task_id: int, num_classes: int) -> None:
        self.blocks.append(nn.Linear(self.input_dim, num_classes))

    @property
    def num_classes_seen(self) -> int:
        return sum(self.classes_per_task)

    def class_offset(self, task_id: int) -> int:
        return sum(self.classes_per_task[:task_id])

    def forward(self, features: Tensor, task_id: int | None = None) -> Tensor:
        if not self.blocks:
            raise RuntimeError("HeadsCIL has no classes yet: call setup_task first")
        return torch.cat([block(features) for block in self.blocks], dim=-1)

    def targets(self, local_labels: Tensor, task_id: int) -> Tensor:
        """Global label = classes of earlier tasks + local label."""
        return local_labels + self.class_offset(task_id)
