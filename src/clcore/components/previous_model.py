"""The model as it was at the end of the previous task, frozen: LwF's teacher, iCaRL's old network.

Both distil the current model towards the outputs the previous task's model gives (Li & Hoiem
2017, Sec. 3; Rebuffi et al. 2017, Algorithm 3). The copy is taken when a new task starts, before
its heads grow, so its heads cover the old tasks' classes only.

It is kept out of the module registry on purpose (the algorithm holds this object, not an
``nn.Module`` attribute): it is not in ``state_dict``, never seen by the optimizer, and not moved
by Lightning (``to`` follows the model's device). It is not checkpointed either: checkpoints are
written at task ends and ``setup_task`` runs after a resume restored the weights, so copying there
rebuilds exactly the copy an uninterrupted run took.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class PreviousModel:
    """``network``: ``ModuleDict(backbone=, heads=)`` of the previous task's end, or ``None`` in task 1."""

    def __init__(self) -> None:
        self._copy: tuple[nn.Module] | None = None  # a tuple: never registered as a submodule
        self._task: int | None = None

    @property
    def network(self) -> nn.Module | None:
        return None if self._copy is None else self._copy[0]

    def take(self, task_id: int, backbone: nn.Module, heads: nn.Module) -> None:
        """Copy ``backbone`` and ``heads`` at the start of task ``task_id`` > 0, frozen, in eval mode.

        Idempotent per task: called twice for one task, it does not copy a half-trained model.
        """
        if task_id > 0 and self._task != task_id:
            previous = copy.deepcopy(nn.ModuleDict({"backbone": backbone, "heads": heads}))
            self._copy = (previous.eval().requires_grad_(False),)
            self._task = task_id

    def to(self, device: torch.device) -> None:
        if self._copy is not None:
            self._copy[0].to(device)
