"""EWC: Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017), diagonal Fisher, one penalty per task."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad, vmap

from clcore.algorithms.base import OptimizerFactory, SchedulerFactory
from clcore.backbones.base import CLBackbone
from clcore.components.parameter_penalty import ParameterPenaltyAlgorithm, Tensors
from clcore.heads.base import CLHeads

FISHER_TYPES = ("true", "empirical")
LogitsFunction = Callable[[Tensors, Tensor], Tensor]


def fisher_type(value) -> str | None:
    """``"true"`` or ``"empirical"``; YAML and Hydra read an unquoted ``true`` as a boolean: the same."""
    if value is True:
        return "true"
    return value if value in FISHER_TYPES else None


def _log_likelihood(logits_fn: LogitsFunction) -> Callable[[Tensors, Tensor, Tensor], Tensor]:
    """``log p(y | x; theta)`` of one sample (``x`` without its batch dimension), for ``torch.func.grad``."""

    def log_likelihood(params: Tensors, x: Tensor, y: Tensor) -> Tensor:
        return -F.cross_entropy(logits_fn(params, x.unsqueeze(0)), y.unsqueeze(0))

    return log_likelihood


def empirical_fisher_sum(logits_fn: LogitsFunction, params: Tensors, x: Tensor, targets: Tensor) -> Tensors:
    r"""$\sum_n (\partial \log p(y_n \mid x_n) / \partial\theta)^2$ over a batch, at the true labels $y_n$.

    The "empirical Fisher": squared per-sample gradients of the log-likelihood of the data's own
    labels (``torch.func``: ``vmap`` of ``grad`` over the samples, one batched pass).
    """
    per_sample = vmap(grad(_log_likelihood(logits_fn)), in_dims=(None, 0, 0))(params, x, targets)
    return {name: g.square().sum(0) for name, g in per_sample.items()}


def true_fisher_sum(logits_fn: LogitsFunction, params: Tensors, x: Tensor) -> Tensors:
    r"""$\sum_n \sum_y p(y \mid x_n) (\partial \log p(y \mid x_n) / \partial\theta)^2$ over a batch: the
    Fisher information.

    The expectation over the model's predictive distribution is taken exactly, as a sum over the
    classes weighted by $p(y \mid x_n)$ (no sampled labels, so no randomness): one batched
    per-sample-gradient pass per class, so memory stays that of one gradient per sample.
    """
    with torch.no_grad():
        probabilities = torch.softmax(logits_fn(params, x), dim=-1)
    per_sample_grad = vmap(grad(_log_likelihood(logits_fn)), in_dims=(None, 0, 0))
    totals = {name: torch.zeros_like(p) for name, p in params.items()}
    for label in range(probabilities.shape[-1]):
        labels = torch.full((len(x),), label, dtype=torch.long, device=x.device)
        weight = probabilities[:, label]
        for name, g in per_sample_grad(params, x, labels).items():
            totals[name] += torch.tensordot(weight, g.square(), dims=1)
    return totals


class EWC(ParameterPenaltyAlgorithm):
    r"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017), for TIL, CIL and DIL.

    - Loss on task $t$:

        $$L_t(\theta) + \sum_{s<t} \frac{\lambda}{2} \sum_i F_{s,i} \, (\theta_i - \theta^*_{s,i})^2$$

        (Eq. 3; with more than two tasks the paper keeps a separate penalty per earlier task,
        as the text after Eq. 3 describes), $\theta^*_s$ the parameters at the end of task $s$.

    - $F_s$ is the diagonal of the Fisher information at $\theta^*_s$ on task $s$'s training data,
      a mean over samples, estimated at the end of the task's training in eval mode (no dropout):
      ``fisher="true"``:
      $\mathbb{E}_x \sum_y p(y \mid x) (\partial \log p(y \mid x) / \partial\theta)^2$,
      the Fisher of the paper, computed exactly over the classes (``true_fisher_sum``);
      ``fisher="empirical"``: the squared gradients at the data's labels
      (``empirical_fisher_sum``), a common approximation.

    - $p(y \mid x)$ is the paradigm's output on the task: TIL its own head, CIL the head over all
      classes seen so far, DIL the shared head. Parameters covered: see
      ``clcore.components.parameter_penalty`` (backbone and the heads existing at the task's end).

    Args:
        reg_lambda: $\lambda$ (the penalty is $\lambda/2$ times the Fisher-weighted distance).
        fisher: ``true`` or ``empirical`` (see above).
        importance_samples: training samples of the task used for $F$ (first ones of the task's
            seeded training order); ``None``: all.
        options: a subclass's own options, checked with these (``OnlineEWC``'s ``gamma``).
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
        reg_lambda: float = 100.0,
        fisher: str | bool = "true",  # "true" | "empirical"; YAML reads an unquoted true as a bool
        importance_samples: int | None = None,
        options: dict | None = None,
    ) -> None:
        own = {"fisher": fisher, "importance_samples": importance_samples, **(options or {})}
        super().__init__(
            backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor, reg_lambda, own
        )
        self.penalty_scale = self.reg_lambda / 2  # Eq. 3's lambda/2
        self.fisher = fisher_type(fisher)
        self.importance_samples = importance_samples

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        fisher = options.get("fisher", "true")
        if fisher_type(fisher) is None:
            problems.append(
                f"algorithm.fisher={fisher!r}: choose true (expectation over the model's predictions) "
                f"or empirical (gradients at the data's labels)"
            )
        return problems

    def fisher_diagonal(self) -> Tensors:
        """$F$: the mean over the task's training samples of the chosen per-sample Fisher diagonal."""

        def per_batch_sum(params: Tensors, x: Tensor, targets: Tensor, task_id: int) -> Tensors:
            logits_fn = self.logits_function(task_id)
            if self.fisher == "empirical":
                return empirical_fisher_sum(logits_fn, params, x, targets)
            return true_fisher_sum(logits_fn, params, x)

        return self.mean_over_task_samples(per_batch_sum, self.importance_samples)

    def update_penalty(self) -> None:
        """One more term: the task's Fisher around the parameters it ended with."""
        self.penalty.add_term(self.penalised_parameters(), self.fisher_diagonal())
