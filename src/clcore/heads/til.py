"""Task-incremental heads: one linear head per task (task id known at test)."""

from __future__ import annotations

from torch import Tensor, nn

from clcore.heads.base import CLHeads


class HeadsTIL(CLHeads):
    """``logits = heads[t](features)``, over task t's classes only."""

    paradigm = "til"

    def __init__(self, input_dim: int) -> None:
        super().__init__(input_dim)
        self.heads = nn.ModuleList()

    def _grow(self, task_id: int, num_classes: int) -> None:
        self.heads.append(nn.Linear(self.input_dim, num_classes))

    def forward(self, features: Tensor, task_id: int) -> Tensor:
        if not 0 <= task_id < len(self.heads):
            raise IndexError(f"no head for task {task_id + 1}: {len(self.heads)} task(s) set up")
        return self.heads[task_id](features)
