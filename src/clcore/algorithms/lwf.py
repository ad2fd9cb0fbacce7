"""LwF: Learning without Forgetting (Li & Hoiem, TPAMI 2017), for TIL, CIL and DIL."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clcore.algorithms.base import CLAlgorithm, OptimizerFactory, SchedulerFactory
from clcore.backbones.base import CLBackbone
from clcore.components.distillation import distillation_loss
from clcore.components.previous_model import PreviousModel
from clcore.config_rules import is_number
from clcore.heads.base import CLHeads
from clcore.metrics.names import task_metric


def old_task_logits(heads: CLHeads, features: Tensor, num_old_tasks: int) -> list[Tensor]:
    r"""The outputs LwF keeps close to the teacher's, one tensor per distillation term.

    - TIL: each old task's own head, ``heads(features, j)`` for $j < t$ (Li & Hoiem Sec. 3: one
      $L_{\text{old}}$ per old task, summed);
    - CIL: the old classes' columns of the grown head, as one distribution over all old classes
      (the class-incremental LwF of van de Ven, Tuytelaars & Tolias 2022, Methods);
    - DIL: the shared head's outputs (the same label space for every task).

    A teacher's heads have exactly the old tasks' outputs, so the same call serves teacher and student.
    """
    if heads.paradigm == "til":
        return [heads(features, j) for j in range(num_old_tasks)]
    logits = heads(features, num_old_tasks - 1)
    if heads.paradigm == "cil":
        return [logits[:, : heads.class_offset(num_old_tasks)]]
    return [logits]


class LwF(CLAlgorithm):
    r"""Learning without Forgetting (Li & Hoiem, TPAMI 2017, Sec. 3, Fig. 2e).

    Before task $t$ trains, a frozen copy of backbone and heads, the model as it was at the end
    of task $t - 1$, is kept (the *teacher*). Every training batch of task $t$ goes through
    both; the loss is

    $$L = \mathrm{CE}(\text{new task}) + \lambda_o \sum_{\text{old}}
    \mathrm{distillation}(\text{student}_{\text{old}}, \text{teacher}_{\text{old}}, T)$$

    (Eq. 2 for the distillation, $\lambda_o$ of Sec. 3 for its weight, ``distillation_lambda``
    here; the paper's weight decay $R$ is the optimizer's). The paper records the old heads'
    responses once, before training, on the new task's data; without data augmentation that is
    the same as computing them on the fly with the frozen copy, which is what is done here (no
    per-sample index into a recording).
    What the old outputs are in each paradigm: ``old_task_logits``. The teacher runs in eval mode
    (dropout off, batch norm with its running statistics). Task 1 trains with CE only.

    Resume: the teacher is not checkpointed. It is rebuilt in ``setup_task`` from the model's
    weights at that point, which after a resume are those restored from the previous task's
    checkpoint, i.e. the same end-of-task weights the uninterrupted run copied.

    Args:
        backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor: as ``CLAlgorithm``.
        distillation_lambda: $\lambda_o$, the weight of the distillation terms (1 in the paper).
        temperature: $T$ of Eq. 2 (2 in the paper).
        t_squared: multiply the distillation by $T^2$ (Hinton et al. 2015); LwF does not.
    """

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        """The setting's rules (``CLAlgorithm``) and LwF's own options."""
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        strength = options.get("distillation_lambda", 1.0)
        if not is_number(strength) or not 0 <= strength < float("inf"):
            problems.append(
                f"algorithm.distillation_lambda={strength!r}: must be a finite number >= 0 (0: Finetuning)"
            )
        temperature = options.get("temperature", 2.0)
        if not is_number(temperature) or not 0 < temperature < float("inf"):
            problems.append(f"algorithm.temperature={temperature!r}: must be a finite number > 0 (LwF: 2)")
        if not isinstance(options.get("t_squared", False), bool):
            problems.append(f"algorithm.t_squared={options['t_squared']!r}: must be true or false")
        return problems

    def __init__(
        self,
        backbone: CLBackbone,
        heads: CLHeads,
        optimizer: OptimizerFactory,
        num_tasks: int,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_monitor: str = "val/loss",
        distillation_lambda: float = 1.0,
        temperature: float = 2.0,
        t_squared: bool = False,
    ) -> None:
        options = dict(distillation_lambda=distillation_lambda, temperature=temperature, t_squared=t_squared)
        super().__init__(backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor, options)
        self.distillation_lambda = float(distillation_lambda)
        self.temperature = float(temperature)
        self.t_squared = t_squared
        self.previous = PreviousModel()  # the teacher (``clcore.components.previous_model``)

    @property
    def teacher(self) -> nn.Module | None:
        """``ModuleDict(backbone=, heads=)``: the frozen model at the end of the previous task."""
        return self.previous.network

    def setup_task(self, task_id: int, num_classes: int) -> None:
        self.previous.take(task_id, self.backbone, self.heads)  # before the heads grow
        super().setup_task(task_id, num_classes)

    def on_train_start(self) -> None:
        # Lightning moved the model to its device; the unregistered teacher follows here.
        self.previous.to(self.device)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, labels, task_id = batch
        features = self.backbone(x)
        loss = self.loss(self.heads(features, task_id), self.heads.targets(labels, task_id))
        if self.teacher is not None and self.distillation_lambda > 0:
            with torch.no_grad():
                targets = old_task_logits(self.teacher["heads"], self.teacher["backbone"](x), task_id)
            outputs = old_task_logits(self.heads, features, task_id)
            distillation = sum(
                distillation_loss(student, teacher, self.temperature, self.t_squared)
                for student, teacher in zip(outputs, targets, strict=True)
            )
            loss = loss + self.distillation_lambda * distillation
            if self.is_logging_step(batch_idx):
                self.log(
                    task_metric("train/distillation", task_id), distillation, on_step=True, on_epoch=False
                )
        if self.is_logging_step(batch_idx):
            self.log(task_metric("train/loss", task_id), loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss
