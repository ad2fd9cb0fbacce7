"""SI: Synaptic Intelligence (Zenke, Poole & Ganguli, ICML 2017), path-integral importance."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clcore.algorithms.base import OptimizerFactory, SchedulerFactory
from clcore.backbones.base import CLBackbone
from clcore.components.parameter_penalty import ParameterPenaltyAlgorithm, Tensors
from clcore.config_rules import is_number
from clcore.heads.base import CLHeads


class PathIntegral:
    r"""$\omega_i = -\sum_{\text{steps}} g_i \, \Delta\theta_i$: each parameter's share of the loss decrease.

    Call ``before_step(parameters, gradients)`` with the task loss's gradient just before an
    optimiser step and ``after_step(parameters)`` just after it; ``omega`` then holds the running
    sum. Along a continuous gradient-flow path $\sum_i \omega_i$ is the loss decrease; with
    discrete steps it is the first-order estimate the paper uses.
    """

    def __init__(self) -> None:
        self.omega: Tensors = {}
        self._before: Tensors = {}
        self._gradients: Tensors = {}

    @torch.no_grad()
    def before_step(self, parameters: dict[str, Tensor], gradients: dict[str, Tensor]) -> None:
        self._before = {name: parameters[name].detach().clone() for name in gradients}
        self._gradients = {name: g.detach().clone() for name, g in gradients.items()}

    @torch.no_grad()
    def after_step(self, parameters: dict[str, Tensor]) -> None:
        for name, g in self._gradients.items():
            step = parameters[name].detach() - self._before[name]
            if name not in self.omega:
                self.omega[name] = torch.zeros_like(step)
            self.omega[name].addcmul_(g, step, value=-1.0)
        self._before, self._gradients = {}, {}


def si_importance(omega: Tensors, delta: Tensors, xi: float) -> Tensors:
    r"""$\Omega_i = \omega_i / \left((\Delta\theta_i)^2 + \xi\right)$ for one task (Eq. 5's summand).

    $\Delta\theta_i$ is the parameter's total change over the task, $\xi$ the damping that keeps
    the ratio bounded where a parameter barely moved. $\omega$ is left unclipped (it can be
    negative where a step went uphill), as the paper's definition.
    """
    return {name: omega[name] / (delta[name].square() + xi) for name in omega}


class SI(ParameterPenaltyAlgorithm):
    r"""Synaptic Intelligence (Zenke et al., ICML 2017), for TIL, CIL and DIL.

    - During task $t$, every optimiser step adds $-g_i \, \Delta\theta_i$ to $\omega_i$ (the
      path integral), $g$ the gradient of the *task* loss $L_t$ (the unregularised one: $\omega$
      measures each parameter's share in the decrease of $L_t$, as in the paper): it is the
      optimiser's gradient minus the penalty's known gradient
      $2c \, \Omega_i (\theta_i - \tilde\theta_i)$ for each parameter $i$. Taken after the backward, before the step
      (``on_before_optimizer_step``), so gradient clipping or accumulation do not change it.

    - At the task's end (Eq. 5, the sum over earlier tasks):

        $$\Omega_i \leftarrow \Omega_i + \frac{\omega_i}{(\Delta_i)^2 + \xi}$$

        with $\Delta_i$ the parameter's change over the task; $\tilde\theta$ becomes the parameters
        at the task's end.

    - Loss on task $t$ (Eq. 4; no $1/2$):

        $$L_t + c \sum_i \Omega_i \, (\theta_i - \tilde\theta_i)^2$$

    The parameters tracked are the ones that train, heads included (see
    ``clcore.components.parameter_penalty``); a head new in task $t$ starts its $\Delta$ at its
    initial value. $\omega$ restarts every task, so a checkpoint after a task holds all SI needs.

    Args:
        reg_lambda: $c$, the strength of the surrogate loss (Eq. 4).
        xi: the damping $\xi > 0$ of Eq. 5.
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
        xi: float = 1e-3,
    ) -> None:
        super().__init__(
            backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor, reg_lambda, {"xi": xi}
        )
        self.xi = float(xi)
        self.path_integral = PathIntegral()
        self._task_start: Tensors = {}

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        xi = options.get("xi", 1e-3)
        if not (is_number(xi) and math.isfinite(xi) and xi > 0):
            problems.append(f"algorithm.xi={xi!r}: the damping must be a finite number > 0")
        return problems

    def on_train_start(self) -> None:
        self.path_integral = PathIntegral()
        self._task_start = {name: p.detach().clone() for name, p in self.penalised_parameters().items()}

    def on_before_optimizer_step(self, optimizer) -> None:
        # The gradient here is that of L_t + c * penalty; SI integrates L_t's alone. The penalty's
        # gradient is known in closed form, so subtracting it costs no second backward pass.
        parameters = dict(self.named_parameters())
        penalty_gradient = self.penalty.gradient(parameters)
        task_gradients = {}
        for name, p in self.penalised_parameters().items():
            if p.grad is None:
                continue
            task_gradients[name] = p.grad
            if name in penalty_gradient:
                task_gradients[name] = p.grad - self.penalty_scale * penalty_gradient[name]
        self.path_integral.before_step(parameters, task_gradients)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        # The closure (forward, backward, on_before_optimizer_step) runs inside the step; after it
        # returns, the parameters hold theta + Delta theta.
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.path_integral.after_step(dict(self.named_parameters()))

    def update_penalty(self) -> None:
        r"""$\Omega \mathrel{+}= \omega / (\Delta^2 + \xi)$ around the task's final parameters (Eq. 5)."""
        final = self.penalised_parameters()
        omega = {name: self.path_integral.omega.get(name, torch.zeros_like(p)) for name, p in final.items()}
        delta = {name: p.detach() - self._task_start.get(name, p.detach()) for name, p in final.items()}
        self.penalty.merge(final, si_importance(omega, delta, self.xi), decay=1.0)
