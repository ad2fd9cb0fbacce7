"""MAS: Memory Aware Synapses (Aljundi et al., ECCV 2018), importance from the output's sensitivity."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.func import grad, vmap

from clcore.algorithms.base import OptimizerFactory, SchedulerFactory
from clcore.backbones.base import CLBackbone
from clcore.components.parameter_penalty import ParameterPenaltyAlgorithm, Tensors
from clcore.heads.base import CLHeads


def mas_importance_sum(logits_fn: Callable[[Tensors, Tensor], Tensor], params: Tensors, x: Tensor) -> Tensors:
    r"""$\sum_n \left| \partial \lVert F(x_n; \theta) \rVert_2^2 / \partial\theta \right|$ over a batch
    (per-sample gradients, ``torch.func``).

    $F$ is the network's output; the squared L2 norm needs no label, so the importance can be
    measured on any data (Aljundi et al. 2018: the gradient of the squared L2 norm of the
    output, averaged in absolute value over the samples).
    """

    def squared_output_norm(p: Tensors, sample: Tensor) -> Tensor:
        return logits_fn(p, sample.unsqueeze(0)).square().sum()

    per_sample = vmap(grad(squared_output_norm), in_dims=(None, 0))(params, x)
    return {name: g.abs().sum(0) for name, g in per_sample.items()}


class MAS(ParameterPenaltyAlgorithm):
    r"""Memory Aware Synapses (Aljundi et al., ECCV 2018), for TIL, CIL and DIL.

    - Importance of task $t$:

        $$\Omega_i = \frac{1}{N} \sum_n \left| g_i(x_n) \right|
        \quad \text{with} \quad
        g_i(x) = \frac{\partial \lVert F(x; \theta) \rVert_2^2}{\partial \theta_i},$$

        over the task's training samples, at the end of its training, in
        eval mode. $F$ is the network's output for the task: the logits of the paradigm's head
        (TIL: the task's own head; CIL: the head over every class seen so far; DIL: the shared
        head), not the backbone's features.

    - Importances add up over tasks, $\Omega \leftarrow \Omega + \Omega_t$, around the latest
      parameters $\theta^*$ (so no earlier task's importance is lost).

    - Loss on task $t$ (no $1/2$):

        $$L_t + \lambda \sum_i \Omega_i \, (\theta_i - \theta^*_i)^2$$

    Args:
        reg_lambda: $\lambda$.
        importance_samples: training samples of the task used for $\Omega$; ``None``: all.
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
        importance_samples: int | None = None,
    ) -> None:
        super().__init__(
            backbone,
            heads,
            optimizer,
            num_tasks,
            lr_scheduler,
            lr_scheduler_monitor,
            reg_lambda,
            {"importance_samples": importance_samples},
        )
        self.importance_samples = importance_samples

    def importance(self) -> Tensors:
        def per_batch_sum(params: Tensors, x: Tensor, targets: Tensor, task_id: int) -> Tensors:
            return mas_importance_sum(self.logits_function(task_id), params, x)

        return self.mean_over_task_samples(per_batch_sum, self.importance_samples)

    def update_penalty(self) -> None:
        r"""$\Omega \leftarrow \Omega + \Omega_t$ around the task's final parameters."""
        self.penalty.merge(self.penalised_parameters(), self.importance(), decay=1.0)
