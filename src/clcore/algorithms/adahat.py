"""AdaHAT: Adaptive Hard Attention to the Task (Wang et al., ECML PKDD 2024), on HAT's machinery.

HAT (Serra et al. 2018, Eq. 2) multiplies the gradient of every shared weight by
``1 - min(a_{l,i}^{<t}, a_{l-1,j}^{<t})``: a weight that any earlier task uses is frozen for good,
so on a long task sequence the free capacity runs out (AdaHAT, Sec. 1 and 3). AdaHAT keeps
everything else of HAT (gates, annealing, sparsity regulariser, embedding compensation, binary
test masks) and replaces the hard freeze with a soft rate per parameter (Sec. 3.1). Equation
numbers below are those of the paper as its author's code (CLArena ``AdaHAT``) cites them:

- Eq. 7, summative mask (parameter importance per unit): the number of earlier tasks whose binary
  mask keeps unit ``i`` of layer ``l``,
  ``m_{l,i}^{<t,sum} = sum_{k<t} a_{l,i}^k`` (all zeros for task 1);
  per weight, aggregated like Eq. 2, ``I_{l,ij} = min(m_{l,i}^{<t,sum}, m_{l-1,j}^{<t,sum})``
  (a layer reading the input uses its own unit's value; a bias uses its unit's value);
- network sparsity of layer ``l``: HAT's mask sparsity term (Serra et al., Eq. 5) restricted to the
  layer, on this batch's training mask ``a^t = sigmoid(s e^t)``,
  ``R_l = sum_i a_{l,i}^t (1 - a_{l,i}^{<t}) / sum_i (1 - a_{l,i}^{<t})`` (0 when no unit is free);
- Eq. 9, adjustment rate, with adjustment intensity ``alpha`` and ``epsilon``:
  ``r_l = alpha / (epsilon + R_l)``,  ``a*_{l,ij} = r_l / (I_{l,ij} + r_l)``;
- Eq. 8: ``g_{l,ij} <- a*_{l,ij} g_{l,ij}`` before the optimizer step.

What the rate does: a parameter no earlier task used (``I = 0``) is free, rate exactly 1; the rate
falls as ``r_l / (I + r_l)`` with the number of tasks relying on it (``~ r_l / I`` for large
``I``). A layer where the task still claims many free units (large ``R_l``: there is room) protects
old parameters more; a saturated layer (``R_l -> 0``) lets them move most, ``r_l = alpha/epsilon``.
``alpha -> 0`` gives HAT's Eq. 2 (rate ``1[I = 0]``); ``alpha -> inf`` gives no constraint
(``hat_const_1``). Task 1 has ``I = 0`` everywhere: it trains exactly as HAT's task 1.

Not promised (unlike HAT): bit-identical outputs on earlier tasks. A weight an earlier task relies
on gets a small but non-zero rate, so that task's test outputs may drift a little; that is the
point, it buys plasticity for later tasks. What is promised: parameters unused by earlier tasks
train at full rate, used ones at exactly ``a*`` of their gradient, and the masks, the summative
mask included, survive a resume (it is recomputed from the stored binary masks, which are
checkpointed buffers of the backbone).

Defaults: ``alpha = 1e-6``, ``epsilon = 0.1`` and ``c = 0.1`` (mask sparsity factor) are the
author's settings (CLArena's ``epsilon`` default; its AdaHAT experiment configs for Permuted
MNIST/CIFAR: ``alpha = 1e-6``, regulariser factor 0.1, ``s_max = 400``, Adam, no weight decay).
Network sparsity is per layer, with the *original* HAT regulariser (``mask_sparsity_reg_mode``
only changes the loss term; ``R_l`` is always Eq. 5's per-layer share, which is what the author's
code uses with the regulariser AdaHAT pairs with, ``original``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clcore.algorithms.base import OptimizerFactory, SchedulerFactory
from clcore.algorithms.hat import HAT, MaskSparsityRegMode
from clcore.backbones.hat_mask import EmbeddingInit, HATMaskBackbone, units_used
from clcore.config_rules import is_number, raise_if_problems
from clcore.heads.base import CLHeads


def previous_summative_mask(backbone: HATMaskBackbone, task_id: int) -> dict[str, Tensor]:
    """``m^{<t,sum}`` (AdaHAT Eq. 7): per unit, how many stored tasks before ``task_id`` keep it.

    Summed from the backbone's stored binary test masks (checkpointed buffers), so it needs no
    state of its own and is exact after a resume. ``task_id = 0``: zeros; ``task_id = k + 1``:
    the summative mask right after task ``k`` (``task_id`` may be ``num_tasks``).
    """
    if not 0 <= task_id <= backbone.num_tasks:
        raise IndexError(
            f"task {task_id + 1} is out of range: this backbone was built for {backbone.num_tasks} tasks"
        )
    stored = backbone.task_mask_stored[:task_id]
    return {
        name: (gate.test_masks[:task_id] * stored[:, None]).sum(dim=0)
        for name, gate in backbone.gates.items()
    }


def layer_network_sparsity(
    masks: dict[str, Tensor], previous_cumulative_mask: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Network sparsity per layer: HAT's Eq. 5 term on one layer, as AdaHAT's Eq. 9 uses it.

    ``R_l = sum_i a_{l,i}^t (1 - a_{l,i}^{<t}) / sum_i (1 - a_{l,i}^{<t})``: the share of the
    layer's still-free units that the task's mask claims. 0 when the layer has no free unit (a
    saturated layer then gets the largest ``r_l``, i.e. the most plasticity), the same 0/0
    convention as ``mask_sparsity_regulariser``. Per layer, not global: the author's code gives
    each layer its own ``r_l``.
    """
    sparsity = {}
    for name, mask in masks.items():
        free = 1.0 - previous_cumulative_mask[name]
        # free counts are integers: clamp_min(1) is exact when non-zero and gives 0/1 = 0 otherwise
        sparsity[name] = (mask * free).sum() / free.sum().clamp_min(1.0)
    return sparsity


def adahat_adjustment_rate(
    importance: Tensor, network_sparsity: Tensor | float, alpha: float, epsilon: float
) -> Tensor:
    """AdaHAT's Eq. 9: ``a* = r / (I + r)`` with ``r = alpha / (epsilon + R)``.

    ``importance`` is ``I`` (per parameter, summative counts, >= 0), ``network_sparsity`` the
    layer's ``R`` (broadcast). ``I = 0`` gives exactly 1 (``r / r``).
    """
    r = alpha / (epsilon + network_sparsity)
    return r / (importance + r)


def adahat_option_problems(options) -> list[str]:
    """AdaHAT's own options: ``alpha`` and ``epsilon`` finite and > 0 (absent: defaults)."""
    problems = []
    for key, default, meaning in (
        ("adjustment_intensity", 1e-6, "alpha of Eq. 9; 0 would give 0/0 for unused parameters"),
        (
            "epsilon",
            0.1,
            "added to the network sparsity in Eq. 9 so that r = alpha/(epsilon + R) stays finite",
        ),
    ):
        value = options.get(key, default)
        if not (is_number(value) and math.isfinite(value) and value > 0):
            problems.append(f"algorithm.{key}={value!r}: must be a finite number > 0 ({meaning})")
    return problems


class AdaHAT(HAT):
    """Adaptive HAT (Wang et al., ECML PKDD 2024), task-incremental only; see the module docstring.

    The other arguments (backbone, heads, optimizer, num_tasks, lr_scheduler,
    lr_scheduler_monitor, s_max, mask_sparsity_reg_mode, compensation_threshold, embedding_clamp,
    embedding_init) are ``HAT``'s. The optimizer must have ``weight_decay=0``: decay shrinks every
    weight at the same pace whatever its importance, undoing Eq. 9's protection (checked).

    Args:
        mask_sparsity_reg_factor: ``c`` in ``loss = CE + c R`` (0.1: the author's AdaHAT runs).
        adjustment_intensity: ``alpha`` of Eq. 9 (> 0; 1e-6 in the author's runs). Smaller: closer
            to HAT's freeze; larger: closer to no constraint.
        epsilon: ``epsilon`` of Eq. 9 (> 0; 0.1, CLArena's default), bounds ``r_l <= alpha/epsilon``.
    """

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        """HAT's rules plus AdaHAT's ``adjustment_intensity`` and ``epsilon``."""
        return super().config_problems(
            options, paradigm=paradigm, backbone_type=backbone_type
        ) + adahat_option_problems(options)

    def __init__(
        self,
        backbone: HATMaskBackbone,
        heads: CLHeads,
        optimizer: OptimizerFactory,
        num_tasks: int,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_monitor: str = "val/loss",
        s_max: float = 400.0,
        mask_sparsity_reg_factor: float = 0.1,
        mask_sparsity_reg_mode: MaskSparsityRegMode = "original",
        adjustment_intensity: float = 1e-6,
        epsilon: float = 0.1,
        compensation_threshold: float = 50.0,
        embedding_clamp: float = 6.0,
        embedding_init: EmbeddingInit = "N01",
    ) -> None:
        # HAT's constructor checks HAT's options only: check AdaHAT's own first.
        raise_if_problems(
            adahat_option_problems({"adjustment_intensity": adjustment_intensity, "epsilon": epsilon})
        )
        super().__init__(
            backbone,
            heads,
            optimizer,
            num_tasks,
            lr_scheduler,
            lr_scheduler_monitor,
            s_max=s_max,
            mask_sparsity_reg_factor=mask_sparsity_reg_factor,
            mask_sparsity_reg_mode=mask_sparsity_reg_mode,
            compensation_threshold=compensation_threshold,
            embedding_clamp=embedding_clamp,
            embedding_init=embedding_init,
        )
        # Not one of HAT's modes: HAT's own rate code (adjustment_rate) is never reached, AdaHAT
        # overrides every method that would call it.
        self.adjustment_mode = "adahat"
        self.adjustment_intensity = float(adjustment_intensity)
        self.epsilon = float(epsilon)

    # ---- the per-task protocol ---------------------------------------------------------------
    def on_train_start(self) -> None:
        # Fixed while the task trains: a^{<t} (for R_l) and the per-parameter importance I
        # (Eq. 7 + min aggregation). Only R_l changes per batch, with the training mask.
        self._previous_cumulative_mask = self.backbone.previous_cumulative_mask(self.task_id)
        summative = previous_summative_mask(self.backbone, self.task_id)
        self._importance = self.backbone.parameter_measures(summative, aggregation="min")
        # Nothing used yet (task 1): every rate is r / (0 + r) = 1 exactly, multiplying by it
        # changes no bit, so the step skips it (one host sync per task, not per step).
        self._any_importance = any(bool(m.any()) for m in summative.values())

    def on_task_end(self, task_id: int) -> dict[str, float]:
        """As ``HAT.on_task_end``; ``capacity`` is AdaHAT's, ``capacity_after_task(task_id)``."""
        if not bool(self.backbone.task_mask_stored[task_id]):
            self.backbone.store_mask(task_id)
        return {
            "capacity": float(self.capacity_after_task(task_id)),
            "mask_sparsity": float(units_used(self.backbone.test_mask(task_id))),
            "cumulative_mask_sparsity": float(units_used(self.backbone.cumulative_mask())),
        }

    # ---- training ----------------------------------------------------------------------------
    @torch.no_grad()
    def adjust_gradients(self, masks: dict[str, Tensor] | None = None) -> None:
        """Eq. 8 with Eq. 9's rates: ``g <- r_l / (I + r_l) * g`` on every masked layer's weight and bias.

        ``masks`` are this batch's training masks (HAT's step passes them): ``R_l`` is measured
        on them, so ``r_l`` follows the mask as it anneals, as in the author's code.
        """
        if masks is None:
            raise ValueError(
                "AdaHAT's rates depend on the batch's training masks (network sparsity, Eq. 9): "
                "call adjust_gradients(masks)"
            )
        if not self._any_importance:
            return
        sparsity = layer_network_sparsity(
            {name: mask.detach() for name, mask in masks.items()}, self._previous_cumulative_mask
        )
        layers = self.backbone.masked_layers
        for name, (weight_importance, bias_importance) in self._importance.items():
            layer = layers[name]
            rate = (self.adjustment_intensity, self.epsilon)
            if layer.weight.grad is not None:
                layer.weight.grad.mul_(adahat_adjustment_rate(weight_importance, sparsity[name], *rate))
            if bias_importance is not None and layer.bias.grad is not None:
                layer.bias.grad.mul_(adahat_adjustment_rate(bias_importance, sparsity[name], *rate))

    # ---- network capacity (AdaHAT Sec. 4.1: mean adjustment rate over the shared parameters) --
    @torch.no_grad()
    def _mean_rate(self, unit_importance: dict[str, Tensor], sparsity: dict[str, Tensor]) -> Tensor:
        total = torch.zeros((), dtype=torch.float64)
        count = 0
        for name, pair in self.backbone.parameter_measures(unit_importance, aggregation="min").items():
            for importance in pair:
                if importance is not None:
                    rate = adahat_adjustment_rate(
                        importance, sparsity[name], self.adjustment_intensity, self.epsilon
                    )
                    total += rate.double().sum().cpu()
                    count += importance.numel()
        return total / count

    @torch.no_grad()
    def capacity_after_task(self, task_id: int) -> Tensor:
        """Network capacity after task ``task_id`` (0-based): the mean Eq. 9 rate over the shared
        weights and biases, with the summative mask including that task.

        Eq. 9 also needs the next task's ``R_l``, unknown until it trains: this uses the one task
        ``task_id`` ended with, ``R_l`` of its binary mask against ``a^{<task_id}``. Derived from
        stored masks only, so the same after a resume. 1 for an untouched network.
        """
        unit_importance = previous_summative_mask(self.backbone, task_id + 1)
        sparsity = layer_network_sparsity(
            self.backbone.test_mask(task_id), self.backbone.previous_cumulative_mask(task_id)
        )
        return self._mean_rate(unit_importance, sparsity)

    @torch.no_grad()
    def network_capacity(self, cumulative_mask: dict[str, Tensor] | None = None) -> Tensor:
        """HAT's signature, for callers written for HAT (``HATMaskPlots``).

        Without an argument: ``capacity_after_task`` of the last stored task (1 before any). With a
        mask: it is taken as the per-unit importance (a binary cumulative mask counts each used
        unit once, so the result is an upper bound on AdaHAT's capacity), with the network
        sparsity of the last stored task. Prefer ``capacity_after_task``.
        """
        stored = torch.nonzero(self.backbone.task_mask_stored).flatten().tolist()
        if cumulative_mask is None:
            return self.capacity_after_task(stored[-1]) if stored else torch.ones((), dtype=torch.float64)
        if not stored:
            sparsity = {name: torch.zeros(()) for name in self.backbone.masked_layer_names}
        else:
            last = stored[-1]
            sparsity = layer_network_sparsity(
                self.backbone.test_mask(last), self.backbone.previous_cumulative_mask(last)
            )
        return self._mean_rate(cumulative_mask, sparsity)

    # ---- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        configured = super().configure_optimizers()
        optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
        decaying = [
            group.get("weight_decay", 0.0)
            for group in optimizer.param_groups
            if group.get("weight_decay", 0.0)
        ]
        if decaying:
            raise ValueError(
                f"AdaHAT needs weight_decay=0 (got {decaying[0]}): weight decay moves every weight at "
                f"the same pace whatever its importance to earlier tasks, undoing the adjustment rates "
                f"of Eq. 9. Set optimizer.weight_decay=0."
            )
        return configured
