"""Independent: a separate network per task (TIL), the no-forgetting, no-transfer reference."""

from __future__ import annotations

import copy
from collections.abc import Iterable

from torch import Tensor, nn

from clcore.algorithms.base import CLAlgorithm, OptimizerFactory, SchedulerFactory
from clcore.backbones.base import CLBackbone
from clcore.heads.base import CLHeads


class Independent(CLAlgorithm):
    """One backbone per task, each a copy of the same initial network; task ``t`` uses backbone ``t``.

    As CLArena's Independent (Wang et al.; ``clarena/cl_algorithms/independent.py``), every task's
    backbone starts from the *same initial state* (a copy of the network as built), not from a new
    random draw: the tasks differ only in their data, so no task transfers anything to another and
    none forgets (earlier tasks' backbones and heads are never updated again: their test outputs
    stay bit-identical). Heads are the usual TIL heads, one per task.

    The copies are made up front, one per task of the sequence, so the module's structure is fixed
    from the start and a checkpoint loads into a freshly built one (resume needs nothing else).
    ``self.backbone`` points at the current task's copy, for code that reads "the" backbone.

    Single-task learning (each task trained alone, tested alone) is this algorithm's diagonal,
    whatever the paradigm: a network that has seen only task ``j`` can only predict among task
    ``j``'s classes, so its accuracy on task ``j`` is a TIL accuracy; in DIL the shared head of a
    network trained on task ``j`` alone *is* a head over task ``j``'s (local) labels, in CIL its
    head over the classes it knows is task ``j``'s. So ``algorithm=independent paradigm=til`` gives
    the single-task numbers for TIL, DIL and CIL, and no separate algorithm is needed.

    TIL only: with the task id unknown at test (CIL, DIL) there is no rule for which network to use.
    """

    supported_paradigms = ("til",)
    paradigm_reason = (
        "each task has its own network, chosen by the task id, which only TIL gives at test time"
    )

    def __init__(
        self,
        backbone: CLBackbone,
        heads: CLHeads,
        optimizer: OptimizerFactory,
        num_tasks: int,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_monitor: str = "val/loss",
    ) -> None:
        super().__init__(backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor)
        self.task_backbones = nn.ModuleList(copy.deepcopy(backbone) for _ in range(num_tasks))

    def setup_task(self, task_id: int, num_classes: int) -> None:
        self.backbone = self.task_backbones[task_id]
        super().setup_task(task_id, num_classes)

    def forward(self, x: Tensor, task_id: int) -> Tensor:
        return self.heads(self.task_backbones[task_id](x), task_id)

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        # Only the current task's network: nothing of an earlier task can move, whatever the
        # optimizer does to parameters without a gradient (e.g. weight decay).
        current = [
            *self.task_backbones[self.task_id].parameters(),
            *self.heads.heads[self.task_id].parameters(),
        ]
        return [p for p in current if p.requires_grad]
