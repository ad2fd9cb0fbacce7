"""HAT: Hard Attention to the Task (Serra et al., ICML 2018), with AdaHAT's ablation baselines.

Per batch (manual optimisation, Sec. 2.3-2.6):

1. anneal the gate scale ``s`` over the epoch's batches (Sec. 2.4, Eq. 3);
2. loss = cross-entropy + ``c * R`` with the mask sparsity regulariser ``R`` (Sec. 2.6, Eq. 5);
3. backward; multiply each shared weight's gradient by its adjustment rate, for HAT
   ``1 - min(a_{l,i}^{<t}, a_{l-1,j}^{<t})`` (Sec. 2.3, Eq. 2);
4. compensate the embedding gradients for the annealing (Sec. 2.5);
5. optimizer step; clamp the current task's embeddings to ``[-embedding_clamp, embedding_clamp]``.

At the end of each task's training the binary masks ``1[e > 0]`` are stored and folded into the
cumulative mask, and the test uses each task's stored binary mask.

Why earlier tasks' test outputs do not change at all (TIL, ``adjustment_mode="hat"``): a weight
that an earlier task's output depends on joins two units that task's binary mask keeps, so its
gradient multiplier is exactly 0; every other shared weight only ever meets a 0 from a masked
unit in that task's forward pass. A fresh optimizer per task (the task loop builds one) has no
momentum for these weights, so SGD (with momentum) and Adam leave them bit-identical. This
needs ``weight_decay = 0`` (decay moves every weight, whatever its gradient; checked here), per-task
batch norm (``HATMaskResNet18``), and old heads, embeddings and norms kept out of the optimizer
(``trainable_parameters``).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from lightning.pytorch.trainer.states import TrainerFn, TrainerStatus
from torch import Tensor, nn

from clcore.algorithms.base import CLAlgorithm, OptimizerFactory, SchedulerFactory
from clcore.backbones.hat_mask import EMBEDDING_INIT_MODES, EmbeddingInit, HATMaskBackbone, units_used
from clcore.config_rules import choice_problem, is_number, raise_if_problems
from clcore.heads.base import CLHeads
from clcore.metrics.names import task_metric

# The choices as annotations (the pre-flight check reads them) and as tuples (the code's own checks).
AdjustmentMode = Literal["hat", "hat_random", "hat_const_alpha", "hat_const_1"]
MaskSparsityRegMode = Literal["original", "cross"]
ADJUSTMENT_MODES = get_args(AdjustmentMode)
MASK_SPARSITY_REG_MODES = get_args(MaskSparsityRegMode)


def annealed_s(batch_idx: int, num_batches: int, s_max: float) -> float:
    """``s = 1/s_max + (s_max - 1/s_max) * b / (B - 1)`` for batch ``b = 0..B-1`` (Sec. 2.4, Eq. 3).

    ``B == 1``: ``s_max``. Batch 0 gets ``1/s_max`` (a near-uniform 0.5 gate), the last ``s_max``.
    """
    if num_batches <= 1:
        return float(s_max)
    return 1.0 / s_max + (s_max - 1.0 / s_max) * batch_idx / (num_batches - 1)


def mask_sparsity_regulariser(
    masks: dict[str, Tensor], previous_cumulative_mask: dict[str, Tensor], mode: str = "original"
) -> Tensor:
    """Mask sparsity regulariser ``R`` (Serra et al. 2018, Sec. 2.6, Eq. 5).

    ``original``: ``R = sum_{l,i} a_{l,i}^t (1 - a_{l,i}^{<t}) / sum_{l,i} (1 - a_{l,i}^{<t})``, the
    share of the still-free units the task claims (for task 1, ``a^{<t} = 0``: the mean mask).
    Reusing units earlier tasks hold costs nothing here. Defined as 0 when no unit is free.

    ``cross``: ``R + sum_{l,i} a_{l,i}^t a_{l,i}^{<t} / sum_{l,i} a_{l,i}^{<t}``: it adds the share of
    the earlier tasks' units that the task also uses, discouraging overlap with previous masks, so
    every claimed unit costs, free or not (the extra term is 0 for task 1). Note: CLArena's
    ``cross`` mode (Wang et al.) uses the opposite sign, ``1 - overlap``, i.e. it *rewards* reuse.
    """
    if mode not in MASK_SPARSITY_REG_MODES:
        raise ValueError(f"mask_sparsity_reg_mode must be one of {MASK_SPARSITY_REG_MODES}, got {mode!r}")
    masks_flat = torch.cat([masks[name].flatten() for name in masks])
    previous_flat = torch.cat([previous_cumulative_mask[name].flatten() for name in masks])
    free = 1.0 - previous_flat
    # Counts of binary masks: clamp_min(1) is exact when non-zero and gives 0/1 = 0 otherwise.
    regulariser = (masks_flat * free).sum() / free.sum().clamp_min(1.0)
    if mode == "cross":
        regulariser = regulariser + (masks_flat * previous_flat).sum() / previous_flat.sum().clamp_min(1.0)
    return regulariser


def embedding_gradient_compensation(
    embedding: Tensor, s: float, s_max: float, threshold: float = 50.0
) -> Tensor:
    """Factor for the embedding gradient under annealing (Sec. 2.5).

    ``s_max / s * (cosh(clamp(s e, -thr, thr)) + 1) / (cosh(e) + 1)``: it turns the gradient of
    ``sigmoid(s e)`` into that of ``s_max * sigmoid(e)``, so ``e`` trains at a pace independent of
    ``s`` (the clamp keeps ``cosh`` finite; 50 in the reference code).
    """
    numerator = torch.cosh(torch.clamp(s * embedding, -threshold, threshold)) + 1.0
    return (s_max / s) * numerator / (torch.cosh(embedding) + 1.0)


def adjustment_rate(
    parameter_mask: Tensor, mode: str, alpha: float | None = None, expected: bool = False
) -> Tensor:
    """Gradient multiplier of each parameter from its cumulative-mask measure (binary).

    - ``hat``: ``1 - m`` (Eq. 2: parameters of earlier tasks frozen);
    - ``hat_random``: a rate drawn from U[0, 1] where ``m = 1``, 1 elsewhere (AdaHAT, Wang et al.
      2024, Sec. 4.1 baselines); ``expected=True`` gives its mean, 0.5, instead of a draw;
    - ``hat_const_alpha``: ``alpha`` where ``m = 1``, 1 elsewhere;
    - ``hat_const_1``: 1 everywhere (no constraint).
    In every mode ``rate = r * m + (1 - m)`` with the masked rate ``r`` (0, U[0,1], alpha, 1).
    """
    if mode == "hat":
        masked_rate: Tensor | float = 0.0
    elif mode == "hat_random":
        masked_rate = 0.5 if expected else torch.rand_like(parameter_mask)
    elif mode == "hat_const_alpha":
        if alpha is None:
            raise ValueError("adjustment_mode 'hat_const_alpha' needs adjustment_alpha")
        masked_rate = alpha
    elif mode == "hat_const_1":
        masked_rate = 1.0
    else:
        raise ValueError(f"adjustment_mode must be one of {ADJUSTMENT_MODES}, got {mode!r}")
    return masked_rate * parameter_mask + (1.0 - parameter_mask)


class HAT(CLAlgorithm):
    """Hard Attention to the Task (Serra et al., ICML 2018), task-incremental only.

    Args:
        backbone: a ``HATMaskBackbone`` (``HATMaskMLP``, ``HATMaskResNet18``).
        heads: ``HeadsTIL``: HAT picks the mask by the task id, which CIL/DIL do not give at test.
        optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor: as ``CLAlgorithm``. The
            optimizer must have ``weight_decay=0`` for ``adjustment_mode="hat"`` (decay would move
            the frozen weights). A scheduler is stepped once per epoch (``ReduceLROnPlateau`` on
            ``lr_scheduler_monitor``, skipped when that metric was not logged).
        s_max: maximum gate scale (Sec. 2.4; 400 in the paper).
        mask_sparsity_reg_factor: ``c`` in ``loss = CE + c R`` (Sec. 2.6; 0.75 in the paper).
        mask_sparsity_reg_mode: ``original`` or ``cross`` (see ``mask_sparsity_regulariser``).
        adjustment_mode: ``hat`` (Eq. 2), ``hat_random``, ``hat_const_alpha``, ``hat_const_1``
            (AdaHAT, Wang et al. 2024, Sec. 4.1); see ``adjustment_rate``.
        adjustment_alpha: the constant rate of ``hat_const_alpha``.
        compensation_threshold: clamp of ``s e`` inside the compensation's ``cosh`` (Sec. 2.5).
        embedding_clamp: embeddings are clamped to ``[-embedding_clamp, embedding_clamp]`` after
            each step (6 in the reference code: ``sigmoid(400 * 6)`` is 1 in float32).
        embedding_init: ``N01``, ``U-11``, ``U01``, ``U-10`` or ``last`` (copy the previous task's).
    """

    supported_paradigms = ("til",)
    paradigm_reason = (
        "HAT needs the task id at test time to select that task's mask (Serra et al. 2018, Sec. 2.2)"
    )
    # Masks live on the layers of a HATMaskBackbone (e.g. HATMaskMLP, HATMaskResNet18).
    required_backbone_type = HATMaskBackbone

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        """The setting's rules (``CLAlgorithm``) and HAT's own options (an absent one takes its default)."""
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        choices = {
            "adjustment_mode": ADJUSTMENT_MODES,
            "mask_sparsity_reg_mode": MASK_SPARSITY_REG_MODES,
            "embedding_init": EMBEDDING_INIT_MODES,
        }
        for key, allowed in choices.items():
            if key in options and options[key] not in allowed:
                problems.append(choice_problem(f"algorithm.{key}", options[key], allowed))
        alpha = options.get("adjustment_alpha")
        if options.get("adjustment_mode") == "hat_const_alpha" and alpha is None:
            problems.append(
                "algorithm.adjustment_mode=hat_const_alpha needs algorithm.adjustment_alpha (the constant rate)"
            )
        if alpha is not None and not (is_number(alpha) and 0 <= alpha <= 1):
            problems.append(
                f"algorithm.adjustment_alpha={alpha!r}: must be a gradient rate in [0, 1] (0: frozen, 1: free), or null"
            )
        s_max = options.get("s_max", 400.0)
        if not (is_number(s_max) and math.isfinite(s_max) and s_max >= 1):
            problems.append(
                f"algorithm.s_max={s_max!r}: must be a finite number >= 1 (the anneal runs from 1/s_max up to s_max)"
            )
        factor = options.get("mask_sparsity_reg_factor", 0.75)
        if not (is_number(factor) and math.isfinite(factor) and factor >= 0):
            problems.append(
                f"algorithm.mask_sparsity_reg_factor={factor!r}: must be a finite number >= 0 (0: no sparsity pressure)"
            )
        for key, default, meaning in (
            ("compensation_threshold", 50.0, "the clamp of s e inside cosh"),
            ("embedding_clamp", 6.0, "embeddings are clamped to [-value, value]"),
        ):
            value = options.get(key, default)
            if not (is_number(value) and math.isfinite(value) and value > 0):
                problems.append(f"algorithm.{key}={value!r}: must be a finite number > 0 ({meaning})")
        return problems

    def __init__(
        self,
        backbone: HATMaskBackbone,
        heads: CLHeads,
        optimizer: OptimizerFactory,
        num_tasks: int,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_monitor: str = "val/loss",
        s_max: float = 400.0,
        mask_sparsity_reg_factor: float = 0.75,
        mask_sparsity_reg_mode: MaskSparsityRegMode = "original",
        adjustment_mode: AdjustmentMode = "hat",
        adjustment_alpha: float | None = None,
        compensation_threshold: float = 50.0,
        embedding_clamp: float = 6.0,
        embedding_init: EmbeddingInit = "N01",
    ) -> None:
        options = dict(
            s_max=s_max,
            mask_sparsity_reg_factor=mask_sparsity_reg_factor,
            mask_sparsity_reg_mode=mask_sparsity_reg_mode,
            adjustment_mode=adjustment_mode,
            adjustment_alpha=adjustment_alpha,
            compensation_threshold=compensation_threshold,
            embedding_clamp=embedding_clamp,
            embedding_init=embedding_init,
        )
        super().__init__(backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor, options)
        # The backbone's own rule about the run (room for every task), as the pre-flight check reads it.
        raise_if_problems(
            type(backbone).config_problems({"num_tasks": backbone.num_tasks}, num_tasks=num_tasks)
        )
        self.backbone: HATMaskBackbone
        self.s_max = float(s_max)
        self.mask_sparsity_reg_factor = mask_sparsity_reg_factor
        self.mask_sparsity_reg_mode = mask_sparsity_reg_mode
        self.adjustment_mode = adjustment_mode
        self.adjustment_alpha = adjustment_alpha
        self.compensation_threshold = compensation_threshold
        self.embedding_clamp = embedding_clamp
        self.embedding_init = embedding_init
        self.automatic_optimization = False

    # ---- the per-task protocol ---------------------------------------------------------------
    def setup_task(self, task_id: int, num_classes: int) -> None:
        super().setup_task(task_id, num_classes)
        # A task whose mask is stored has trained: re-initialising would lose its embedding.
        if not bool(self.backbone.task_mask_stored[task_id]):
            self.backbone.initialise_task_embedding(task_id, self.embedding_init)

    def on_train_start(self) -> None:
        # Eq. 2's multipliers depend only on the earlier tasks' cumulative mask, fixed while
        # this task trains: compute the per-parameter measures (and, for the deterministic
        # modes, the rates) once per task instead of once per step.
        self._previous_cumulative_mask = self.backbone.previous_cumulative_mask(self.task_id)
        measures = self.backbone.parameter_measures(self._previous_cumulative_mask, aggregation="min")
        self._adjustment = {
            name: tuple(None if m is None else self._rate_or_measure(m) for m in pair)
            for name, pair in measures.items()
        }

    def _rate_or_measure(self, parameter_mask: Tensor) -> Tensor:
        if self.adjustment_mode == "hat_random":  # a fresh random rate every step
            return parameter_mask
        return adjustment_rate(parameter_mask, self.adjustment_mode, self.adjustment_alpha)

    def on_train_end(self) -> None:
        # Store before the task loop's trainer.test, which uses the binary mask (Sec. 2.2-2.3).
        self.backbone.store_mask(self.task_id)

    def on_task_end(self, task_id: int) -> dict[str, float]:
        """Network capacity left and mask usage after task ``task_id`` (0-based).

        - ``capacity``: mean adjustment rate over the shared backbone parameters under the
          cumulative mask including this task, i.e. the rate the next task would train with
          (AdaHAT Sec. 4.1): 1 for an untouched network, 0 when Eq. 2 freezes everything. Only
          the weights and biases of masked layers count: per-task parameters (embeddings,
          per-task batch norm, heads) are never shared, Eq. 2 does not apply to them.
          ``hat_random`` counts its expected rate (0.5 where masked).
        - ``mask_sparsity``: fraction of all units the task's binary mask keeps (lower: sparser).
        - ``cumulative_mask_sparsity``: the same for the cumulative mask.
        """
        if not bool(self.backbone.task_mask_stored[task_id]):
            self.backbone.store_mask(task_id)
        return {
            "capacity": float(self.network_capacity()),
            "mask_sparsity": float(units_used(self.backbone.test_mask(task_id))),
            "cumulative_mask_sparsity": float(units_used(self.backbone.cumulative_mask())),
        }

    @torch.no_grad()
    def capacity_after_task(self, task_id: int) -> Tensor:
        """``network_capacity`` under the cumulative mask right after task ``task_id`` (0-based),
        from the stored masks (the capacity plot's curve; AdaHAT computes its own)."""
        return self.network_capacity(self.backbone.previous_cumulative_mask(task_id + 1))

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, x: Tensor, task_id: int, mode: str = "test", s: float | None = None) -> Tensor:
        return self.heads(self.backbone(x, task_id, mode, s), task_id)

    def _in_fit_or_validate(self) -> bool:
        trainer = self._trainer
        return (
            trainer is not None
            and trainer.state.status == TrainerStatus.RUNNING
            and trainer.state.fn in (TrainerFn.FITTING, TrainerFn.VALIDATING)
        )

    def eval_logits(self, x: Tensor, task_id: int) -> Tensor:
        """Validation during fit: ``sigmoid(s_max e)``; test (and any use outside fit): binary mask."""
        task_id = int(task_id)
        if self._in_fit_or_validate():
            return self(x, task_id, "val", self.s_max)
        return self(x, task_id, "test")

    # ---- training ----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, labels, task_id = batch
        task_id = int(task_id)
        if task_id != self.task_id:
            raise ValueError(
                f"HAT is set up for task {self.task_id + 1} but got a training batch of task {task_id + 1}"
            )
        num_batches = self.trainer.num_training_batches
        if not math.isfinite(num_batches):
            raise ValueError(
                "HAT anneals s over the epoch's batches (Sec. 2.4): the training dataloader needs a length"
            )
        s = annealed_s(batch_idx, int(num_batches), self.s_max)

        masks = self.backbone.mask(task_id, "train", s)
        logits = self.heads(self.backbone.masked_forward(x, masks, task_id), task_id)
        cross_entropy = self.loss(logits, self.heads.targets(labels, task_id))
        previous_cumulative_mask = self._previous_cumulative_mask
        regulariser = mask_sparsity_regulariser(masks, previous_cumulative_mask, self.mask_sparsity_reg_mode)
        loss = cross_entropy + self.mask_sparsity_reg_factor * regulariser

        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        self.adjust_gradients(masks)
        self.compensate_embedding_gradients(task_id, s)
        optimizer.step()
        self.clamp_embeddings(task_id)

        if self.is_logging_step(batch_idx):
            self.log(task_metric("train/loss", task_id), loss, on_step=True, on_epoch=False, prog_bar=True)
            self.log(
                task_metric("train/mask_sparsity_reg", task_id), regulariser, on_step=True, on_epoch=False
            )
        # returned for the base class's non-finite loss check (on_train_batch_end)
        return loss

    @torch.no_grad()
    def adjust_gradients(self, masks: dict[str, Tensor] | None = None) -> None:
        """``g <- rate * g`` on every masked layer's weight and bias (Eq. 2 for ``hat``).

        ``masks``: this batch's training masks. HAT's rates do not depend on them (unused here);
        AdaHAT's do (its network sparsity, ``clcore.algorithms.adahat``), so the step passes them.
        """
        layers = self.backbone.masked_layers
        for name, (weight_rate, bias_rate) in self._adjustment.items():
            layer = layers[name]
            if self.adjustment_mode == "hat_random":  # cached values are the measures: draw now
                weight_rate = adjustment_rate(weight_rate, "hat_random")
                bias_rate = None if bias_rate is None else adjustment_rate(bias_rate, "hat_random")
            if layer.weight.grad is not None:
                layer.weight.grad.mul_(weight_rate)
            if bias_rate is not None and layer.bias.grad is not None:
                layer.bias.grad.mul_(bias_rate)

    @torch.no_grad()
    def compensate_embedding_gradients(self, task_id: int, s: float) -> None:
        for embedding in self.backbone.embedding_parameters(task_id):
            if embedding.grad is not None:
                embedding.grad.mul_(
                    embedding_gradient_compensation(embedding, s, self.s_max, self.compensation_threshold)
                )

    @torch.no_grad()
    def clamp_embeddings(self, task_id: int) -> None:
        for embedding in self.backbone.embedding_parameters(task_id):
            embedding.clamp_(-self.embedding_clamp, self.embedding_clamp)

    @torch.no_grad()
    def network_capacity(self, cumulative_mask: dict[str, Tensor] | None = None) -> Tensor:
        """Mean adjustment rate over all shared backbone parameters (AdaHAT Sec. 4.1).

        Defaults to the cumulative mask of every stored task.
        """
        cumulative_mask = self.backbone.cumulative_mask() if cumulative_mask is None else cumulative_mask
        total = torch.zeros((), dtype=torch.float64)
        count = 0
        for weight_mask, bias_mask in self.backbone.parameter_measures(
            cumulative_mask, aggregation="min"
        ).values():
            for parameter_mask in (weight_mask, bias_mask):
                if parameter_mask is not None:
                    rate = adjustment_rate(
                        parameter_mask, self.adjustment_mode, self.adjustment_alpha, expected=True
                    )
                    total += rate.double().sum().cpu()
                    count += parameter_mask.numel()
        return total / count

    # ---- optimisation ------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Shared backbone weights + this task's embeddings, norms and head, nothing of other tasks.

        Old tasks' parameters never enter the optimizer, so no optimizer rule can move them.
        """
        parameters = self.backbone.parameters_for_task(self.task_id) + list(
            self.heads.heads[self.task_id].parameters()
        )
        return [p for p in parameters if p.requires_grad]

    def configure_optimizers(self):
        configured = super().configure_optimizers()
        optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
        decaying = [
            group.get("weight_decay", 0.0)
            for group in optimizer.param_groups
            if group.get("weight_decay", 0.0)
        ]
        if decaying and self.adjustment_mode == "hat":
            raise ValueError(
                f"HAT needs weight_decay=0 (got {decaying[0]}): weight decay shrinks the weights Eq. 2 "
                f"froze for earlier tasks, so they would forget. Set optimizer.weight_decay=0."
            )
        if isinstance(configured, dict):
            # Manual optimisation: Lightning ignores 'monitor'; on_train_epoch_end uses it.
            return {"optimizer": optimizer, "lr_scheduler": configured["lr_scheduler"]["scheduler"]}
        return configured

    def on_train_epoch_end(self) -> None:
        # Manual optimisation: Lightning does not step schedulers; validation has already run
        # when this hook fires, so the monitored metric is this epoch's.
        scheduler = self.lr_schedulers()
        if scheduler is None:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            metric = self.trainer.callback_metrics.get(self.lr_scheduler_monitor)
            if metric is not None:
                scheduler.step(metric)
        else:
            scheduler.step()
