"""L2: a plain quadratic pull towards the previous task's parameters (every importance 1)."""

from __future__ import annotations

import torch

from clcore.algorithms.base import OptimizerFactory, SchedulerFactory
from clcore.backbones.base import CLBackbone
from clcore.components.parameter_penalty import ParameterPenaltyAlgorithm
from clcore.heads.base import CLHeads


class L2(ParameterPenaltyAlgorithm):
    r"""L2 regularisation to the previous task's parameters, for TIL, CIL and DIL.

    Loss on task $t$:

    $$L_t + \frac{\lambda}{2} \sum_i (\theta_i - \theta^*_{t-1,i})^2,$$

    $\theta^*_{t-1}$ the parameters at the end of task $t-1$: the penalty of EWC with the Fisher
    replaced by 1, the baseline Kirkpatrick et al. (2017, Fig. 2A) and Zenke et al. (2017) compare
    against. Each task replaces the anchor; the importances stay 1 (the weight-decay convention
    $\lambda/2$).

    Args:
        reg_lambda: $\lambda$.
        **kwargs: the other arguments, as for ``CLAlgorithm``.
    """

    def __init__(
        self,
        backbone: CLBackbone,
        heads: CLHeads,
        optimizer: OptimizerFactory,
        num_tasks: int,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_monitor: str = "val/loss",
        reg_lambda: float = 1.0,
    ) -> None:
        super().__init__(
            backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor, reg_lambda
        )
        self.penalty_scale = self.reg_lambda / 2

    def update_penalty(self) -> None:
        r"""Centre the penalty on the parameters the task ended with ($\Omega = 1$)."""
        anchor = self.penalised_parameters()
        self.penalty.merge(anchor, {name: torch.ones_like(p) for name, p in anchor.items()}, decay=0.0)
