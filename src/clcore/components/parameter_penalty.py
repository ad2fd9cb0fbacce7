r"""The importance-weighted distance to earlier parameters, $\sum_i \Omega_i (\theta_i - \theta^*_i)^2$.

EWC, online EWC, SI, MAS and L2 all add this quadratic penalty to the task loss; they differ in how
the importance $\Omega$ is estimated, how terms of successive tasks combine, and the factor in
front, each paper's own convention:

- EWC (Kirkpatrick et al. 2017, Eq. 3, summed over earlier tasks): one term per earlier task,
  $L_t + \frac{\lambda}{2} \sum_{s<t} \sum_i F_{s,i} (\theta_i - \theta^*_{s,i})^2$;
- online EWC (Schwarz et al. 2018): one merged term around the latest parameters,
  $L_t + \frac{\lambda}{2} \sum_i F^*_i (\theta_i - \theta^*_{t-1,i})^2$ with
  $F^* \leftarrow \gamma F^* + F_{t-1}$;
- SI (Zenke et al. 2017, Eq. 4-5): one merged term, $\Omega$ summed over tasks,
  $L_t + c \sum_i \Omega_i (\theta_i - \tilde\theta_i)^2$ (no $1/2$);
- MAS (Aljundi et al. 2018): one merged term, $\Omega$ summed over tasks,
  $L_t + \lambda \sum_i \Omega_i (\theta_i - \theta^*_i)^2$ (no $1/2$);
- L2: one term replaced each task, $\Omega = 1$,
  $L_t + \frac{\lambda}{2} \sum_i (\theta_i - \theta^*_{t-1,i})^2$.

``ParameterPenalty`` (plain tensors, no Lightning) holds the anchors $\theta^*$ and importances
$\Omega$ and evaluates $\sum \Omega (\theta - \theta^*)^2$ (no factor: the algorithm applies its own).
``ParameterPenaltyAlgorithm`` is the ``CLAlgorithm`` side that the five share: it adds
``penalty_scale * penalty`` to the training loss, checkpoints the penalty in ``cl_state_dict``,
and lets a subclass update it at the end of each task's training (``update_penalty``), with
helpers to estimate a per-sample mean over the task's training data with ``torch.func``.

Which parameters: every parameter that exists and trains when a term is made: the shared backbone
and the heads then present (TIL: earlier tasks' heads; CIL: earlier classes' blocks; DIL: the one
head). A head created later has no anchor, so no penalty. In TIL the earlier heads get no gradient
from the current task's loss, so their terms only hold them where they are; in CIL the earlier
blocks do receive gradients (the softmax spans all classes) and their terms matter, as in the
papers, which penalise the whole network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from clcore.algorithms.base import CLAlgorithm, OptimizerFactory, SchedulerFactory
from clcore.backbones.base import CLBackbone
from clcore.config_rules import is_int, is_number
from clcore.heads.base import CLHeads
from clcore.metrics.names import task_metric

Tensors = dict[str, Tensor]


class ParameterPenalty:
    r"""$\sum_{\text{terms}} \sum_i \Omega_i (\theta_i - \theta^*_i)^2$ over named parameters, as plain
    tensors.

    A term is an anchor $\theta^*$ and an importance $\Omega$, each a ``{name: tensor}`` dict of the
    parameters it covers. ``add_term`` keeps one term per task (EWC); ``merge`` keeps a single term:
    the anchor becomes the new one and
    $\Omega \leftarrow \texttt{decay} \cdot \Omega + \Omega_{\text{new}}$ (online EWC: ``decay`` $= \gamma$;
    SI, MAS: 1; L2: 0, i.e. replaced). A parameter new in $\Omega_{\text{new}}$ joins with its own
    importance. The state (``state_dict``) is tensors and lists only, for ``weights_only`` loading.
    """

    def __init__(self) -> None:
        self.terms: list[tuple[Tensors, Tensors]] = []

    def add_term(self, anchor: Mapping[str, Tensor], importance: Mapping[str, Tensor]) -> None:
        if set(anchor) != set(importance):
            raise ValueError("anchor and importance must name the same parameters")
        self.terms.append((_detached(anchor), _detached(importance)))

    def merge(self, anchor: Mapping[str, Tensor], importance: Mapping[str, Tensor], decay: float) -> None:
        if not self.terms:
            self.add_term(anchor, importance)
            return
        if set(anchor) != set(importance):
            raise ValueError("anchor and importance must name the same parameters")
        _, previous = self.terms[0]
        merged = {
            name: value.detach() + decay * previous[name] if name in previous else value.detach().clone()
            for name, value in importance.items()
        }
        self.terms = [(_detached(anchor), merged)]

    def __call__(self, parameters: Mapping[str, Tensor]) -> Tensor:
        """The penalty at ``parameters`` (a differentiable scalar; 0 before any term)."""
        total = None
        for anchor, importance in self.terms:
            for name, omega in importance.items():
                term = (omega * (parameters[name] - anchor[name]).square()).sum()
                total = term if total is None else total + term
        if total is None:
            return torch.zeros((), device=next(iter(parameters.values())).device)
        return total

    def gradient(self, parameters: Mapping[str, Tensor]) -> Tensors:
        r"""$\partial\text{penalty}/\partial\theta_i = 2\sum_{\text{terms}} \Omega_i (\theta_i - \theta^*_i)$
        for the covered parameters.
        """
        gradients: Tensors = {}
        with torch.no_grad():
            for anchor, importance in self.terms:
                for name, omega in importance.items():
                    term = 2 * omega * (parameters[name] - anchor[name])
                    gradients[name] = gradients[name] + term if name in gradients else term
        return gradients

    @property
    def num_terms(self) -> int:
        return len(self.terms)

    def to(self, device: torch.device | str) -> ParameterPenalty:
        """Move every tensor to ``device`` (a no-op for tensors already there)."""
        self.terms = [
            ({n: t.to(device) for n, t in anchor.items()}, {n: t.to(device) for n, t in omega.items()})
            for anchor, omega in self.terms
        ]
        return self

    def state_dict(self) -> dict:
        return {
            "terms": [
                {"anchor": _cpu(anchor), "importance": _cpu(importance)} for anchor, importance in self.terms
            ]
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.terms = []
        for term in state["terms"]:
            self.add_term(term["anchor"], term["importance"])


def _detached(tensors: Mapping[str, Tensor]) -> Tensors:
    return {name: tensor.detach().clone() for name, tensor in tensors.items()}


def _cpu(tensors: Mapping[str, Tensor]) -> Tensors:
    return {name: tensor.detach().cpu().clone() for name, tensor in tensors.items()}


class ParameterPenaltyAlgorithm(CLAlgorithm):
    r"""A ``CLAlgorithm`` whose loss is $L_t + \texttt{penalty_scale} \cdot \texttt{ParameterPenalty}$
    (see the module doc).

    A subclass sets ``penalty_scale`` (its paper's factor: $\lambda/2$ or $\lambda$) and
    implements ``update_penalty``, called at the end of each task's training (``on_train_end``,
    inside ``fit``, so the task's training batches are at hand) to add or merge the task's term.
    The validation loss stays the plain task loss, so ``val/loss`` measures the task.

    Args:
        reg_lambda: the penalty's strength ($\lambda$, SI's $c$); 0 trains as Finetuning.
        options: the subclass's own options, checked by ``config_problems`` with ``reg_lambda``.
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
        options: Mapping[str, Any] | None = None,
    ) -> None:
        options = {"reg_lambda": reg_lambda, **(options or {})}
        super().__init__(backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor, options)
        self.reg_lambda = float(reg_lambda)
        self.penalty_scale = self.reg_lambda
        self.penalty = ParameterPenalty()

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        reg_lambda = options.get("reg_lambda", 1.0)
        if not (is_number(reg_lambda) and math.isfinite(reg_lambda) and reg_lambda >= 0):
            problems.append(
                f"algorithm.reg_lambda={reg_lambda!r}: must be a finite number >= 0 (0: no penalty)"
            )
        samples = options.get("importance_samples")
        if samples is not None and not (is_int(samples) and samples >= 1):
            problems.append(
                f"algorithm.importance_samples={samples!r}: must be an integer >= 1, or null for every "
                f"training sample of the task"
            )
        return problems

    # ---- what a subclass defines ---------------------------------------------------------------
    def update_penalty(self) -> None:
        """Add or merge the finished task's term; runs at the end of its training (``on_train_end``)."""
        raise NotImplementedError

    # ---- the loss --------------------------------------------------------------------------------
    def penalised_parameters(self) -> dict[str, Tensor]:
        """The parameters a new term covers: every one that trains now, by name."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, labels, task_id = batch
        task_loss = self.loss(self(x, task_id), self.heads.targets(labels, task_id))
        if not self.penalty.num_terms:
            loss = task_loss
        else:
            penalty = self.penalty(dict(self.named_parameters()))
            loss = task_loss + self.penalty_scale * penalty
            if self.is_logging_step(batch_idx):
                self.log(task_metric("train/penalty", task_id), penalty, on_step=True, on_epoch=False)
        if self.is_logging_step(batch_idx):
            self.log(task_metric("train/loss", task_id), loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_fit_start(self) -> None:
        self.penalty.to(self.device)  # after a resume the terms arrive on the CPU

    def on_train_end(self) -> None:
        self.update_penalty()

    # ---- estimates over the task's training data ---------------------------------------------------
    def logits_function(self, task_id: int) -> Callable[[Tensors, Tensor], Tensor]:
        """``f(params, x) -> logits`` of task ``task_id``'s output with ``params`` swapped in (torch.func)."""

        def logits(params: Tensors, x: Tensor) -> Tensor:
            return functional_call(self, params, (x, task_id))

        return logits

    @contextmanager
    def evaluation_mode(self) -> Iterator[None]:
        """Eval mode (no dropout, batch-norm running statistics) for an estimate; modes restored after."""
        modes = {module: module.training for module in self.modules()}
        self.eval()
        try:
            yield
        finally:
            for module, training in modes.items():
                module.training = training

    def mean_over_task_samples(
        self,
        per_batch_sum: Callable[[Tensors, Tensor, Tensor, int], Tensors],
        num_samples: int | None = None,
    ) -> Tensors:
        r"""$\frac{1}{N} \sum_n q(x_n, y_n)$ over the current task's first ``num_samples`` training samples.

        ``per_batch_sum(params, x, targets, task_id)`` returns the sum of $q$ over a batch, per
        parameter (``params`` are ``penalised_parameters``, detached). Batches are those of
        ``current_task_train_batches`` (prepared exactly as in training), in eval mode; ``None``
        takes every training sample. Under data parallelism the sums and counts of every process
        are added, so all hold the same estimate.
        """
        params = {name: p.detach() for name, p in self.penalised_parameters().items()}
        totals = {name: torch.zeros_like(p) for name, p in params.items()}
        count = 0
        with self.evaluation_mode():
            for x, labels, task_id in self.current_task_train_batches():
                if num_samples is not None:
                    x, labels = x[: num_samples - count], labels[: num_samples - count]
                sums = per_batch_sum(params, x, self.heads.targets(labels, task_id), task_id)
                for name, value in sums.items():
                    totals[name] += value
                count += len(labels)
                if num_samples is not None and count >= num_samples:
                    break
        if self.trainer.world_size > 1:
            strategy = self.trainer.strategy
            totals = {name: strategy.reduce(value, reduce_op="sum") for name, value in totals.items()}
            count = int(strategy.reduce(torch.tensor(float(count), device=self.device), reduce_op="sum"))
        if count == 0:
            raise RuntimeError(f"{type(self).__name__}: the task has no training samples to estimate from")
        return {name: value / count for name, value in totals.items()}

    # ---- checkpointed state ----------------------------------------------------------------------
    def cl_state_dict(self) -> dict:
        return {"penalty": self.penalty.state_dict()}

    def load_cl_state_dict(self, state: dict) -> None:
        self.penalty.load_state_dict(state["penalty"])
