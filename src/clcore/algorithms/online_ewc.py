"""Online EWC (Schwarz et al., "Progress & Compress", ICML 2018): a running Fisher, one penalty."""

from __future__ import annotations

import math

from clcore.algorithms.base import OptimizerFactory, SchedulerFactory
from clcore.algorithms.ewc import EWC
from clcore.backbones.base import CLBackbone
from clcore.config_rules import is_number
from clcore.heads.base import CLHeads


class OnlineEWC(EWC):
    r"""Online EWC (Schwarz et al., ICML 2018: the compress phase's "online EWC"), for TIL, CIL and DIL.

    EWC's penalty grows by one term per task; online EWC keeps one:

    - after task $t$: $F^* \leftarrow \gamma F^* + F_t$ (the running Fisher, decay $\gamma \le 1$
      lets old tasks fade), $\theta^* \leftarrow \theta_t$ (the parameters at the end of task $t$);

    - loss on task $t+1$:

        $$L_{t+1}(\theta) + \frac{\lambda}{2} \sum_i F^*_i \, (\theta_i - \theta^*_i)^2$$

    $F_t$ is EWC's diagonal Fisher on task $t$'s training data (``fisher`` true or empirical, see
    ``EWC``). With $\gamma = 1$ the importances of all tasks add up, but unlike EWC the single
    penalty is centred on the latest parameters only.

    Args:
        gamma: the decay of the running Fisher, in $(0, 1]$.
        **kwargs: the other arguments, as for ``EWC``.
    """

    def __init__(
        self,
        backbone: CLBackbone,
        heads: CLHeads,
        optimizer: OptimizerFactory,
        num_tasks: int,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_monitor: str = "val/loss",
        reg_lambda: float = 100.0,
        fisher: str | bool = "true",  # "true" | "empirical"; YAML reads an unquoted true as a bool
        importance_samples: int | None = None,
        gamma: float = 1.0,
    ) -> None:
        super().__init__(
            backbone,
            heads,
            optimizer,
            num_tasks,
            lr_scheduler,
            lr_scheduler_monitor,
            reg_lambda,
            fisher,
            importance_samples,
            options={"gamma": gamma},
        )
        self.gamma = float(gamma)

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        gamma = options.get("gamma", 1.0)
        if not (is_number(gamma) and math.isfinite(gamma) and 0 < gamma <= 1):
            problems.append(f"algorithm.gamma={gamma!r}: the Fisher's decay must be in (0, 1]")
        return problems

    def update_penalty(self) -> None:
        r"""$F^* \leftarrow \gamma F^* + F_t$ around the task's final parameters."""
        self.penalty.merge(self.penalised_parameters(), self.fisher_diagonal(), decay=self.gamma)
