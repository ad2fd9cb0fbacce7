"""WSN: Forget-free Continual Learning with Winning Subnetworks (Kang et al., ICML 2022).

Every masked weight ``w`` (the weight matrices and kernels of the backbone's ``Linear`` and
``Conv`` layers, ``clcore.components.weight_masks``) has a learnable real-valued score ``s``. Per
task ``t`` (Sec. 3):

- the task's subnetwork is the top-``c`` fraction of ``|s|`` in every layer,
  ``m_t = 1[|s| among the top c]``, and the forward pass uses ``w * m_t``;
- ``s`` trains through the straight-through estimator: the hard top-c is treated as the
  identity in the backward pass, ``dL/ds = dL/dm * sign(s)`` with ``dL/dm = dL/d(w m) * w``;
- the weights that earlier tasks' subnetworks use, ``M_{t-1} = m_1 OR ... OR m_{t-1}``, are frozen:
  their gradient is zeroed, ``w <- w - lr * dL/dw * (1 - M_{t-1})`` (Eq. 4), but the new task may
  select them (reuse), and their scores train like every other;
- at the end of the task ``m_t`` is stored (binary, per task; no compression) and
  ``M_t = M_{t-1} OR m_t``.

At test time on task ``j`` the network is ``w * m_j`` with the stored ``m_j``: every weight it
uses is frozen from task ``j`` on, so task ``j``'s outputs never change (BWT is exactly 0).

The scores carry over from task to task, as in the official code (one score tensor per layer for
the whole sequence). Biases and normalisation layers are not masked: WSN's networks have none
to learn (no biases, batch norm without affine parameters); here they train on the first task and
are fixed afterwards (batch norm keeps task 1's statistics), shared unchanged by every task.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from clcore.algorithms.base import OptimizerFactory, SchedulerFactory
from clcore.backbones.base import CLBackbone
from clcore.components.weight_masks import (
    MaskStore,
    Tensors,
    WeightMaskAlgorithm,
    rounded_count,
    storage_key,
    top_k_mask,
    used_fraction,
)
from clcore.config_rules import is_number
from clcore.heads.base import CLHeads


def subnetwork_size(c: float, n: int) -> int:
    """Weights a layer of ``n`` keeps: ``c * n`` rounded half up, at least one."""
    return max(1, rounded_count(c, n))


def subnetwork_mask(scores: Tensor, c: float) -> Tensor:
    """``m = 1[|s| among the top c of its layer]`` (boolean), exactly ``subnetwork_size(c, n)`` entries."""
    return top_k_mask(scores.abs(), subnetwork_size(c, scores.numel()))


class StraightThroughTopK(torch.autograd.Function):
    """Forward: the 0/1 mask of the ``k`` largest ``values``; backward: the gradient unchanged (STE)."""

    @staticmethod
    def forward(ctx, values: Tensor, k: int) -> Tensor:
        return top_k_mask(values, k).to(values.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def straight_through_mask(scores: Tensor, c: float) -> Tensor:
    """``subnetwork_mask`` as 0/1 floats whose gradient reaches ``scores`` (through ``|s|``)."""
    return StraightThroughTopK.apply(scores.abs(), subnetwork_size(c, scores.numel()))


class WSN(WeightMaskAlgorithm):
    """Winning SubNetworks (Kang et al., ICML 2022), task-incremental, on a plain backbone.

    Args:
        backbone: a plain backbone (``MLP``, ``ResNet18``): its ``Linear``/``Conv`` weights are masked.
        heads: ``HeadsTIL``.
        optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor: as ``CLAlgorithm``. The optimiser
            trains the scores too.
        c: fraction of each layer's weights in a task's subnetwork (the paper's capacity ``c``;
            the official code's ``--sparsity``), in (0, 1].
    """

    paradigm_reason = (
        "WSN picks the task's stored subnetwork mask by the task id at test time (Kang et al. 2022, Sec. 3)"
    )

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        c = options.get("c", 0.5)
        if not (is_number(c) and 0 < c <= 1):
            problems.append(
                f"algorithm.c={c!r}: the fraction of each layer's weights in a task's subnetwork must be in "
                f"(0, 1] (e.g. 0.5, the official code's default)"
            )
        return problems

    def __init__(
        self,
        backbone: CLBackbone,
        heads: CLHeads,
        optimizer: OptimizerFactory,
        num_tasks: int,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_monitor: str = "val/loss",
        c: float = 0.5,
    ) -> None:
        super().__init__(
            backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor, options={"c": c}
        )
        self.c = float(c)
        weights = self.masked_weights()
        # Scores drawn as the official code does, like a layer's weights (Kaiming uniform, a = sqrt(5))
        self.scores = nn.ParameterDict(
            {
                storage_key(name): nn.Parameter(nn.init.kaiming_uniform_(torch.empty_like(w), a=math.sqrt(5)))
                for name, w in weights.items()
            }
        )
        # m_t of every task, and which are stored; in every checkpoint
        self.task_masks = MaskStore(
            {name: torch.zeros((num_tasks, *w.shape), dtype=torch.bool) for name, w in weights.items()}
        )
        self.register_buffer("mask_stored", torch.zeros(num_tasks, dtype=torch.bool))

    def score(self, name: str) -> nn.Parameter:
        return self.scores[storage_key(name)]

    # ---- masks -------------------------------------------------------------------------------
    def cumulative_mask(self, num_tasks: int) -> Tensors:
        """``M = m_1 OR ... OR m_{num_tasks}`` over the stored masks of the first ``num_tasks`` tasks."""
        return {name: masks[:num_tasks].any(dim=0) for name, masks in self.task_masks.items()}

    def task_mask(self, task_id: int) -> Tensors:
        """``m_t`` of task ``task_id``: the stored one, or the scores' current top-c before it is stored."""
        if bool(self.mask_stored[task_id]):
            return {name: masks[task_id] for name, masks in self.task_masks.items()}
        return {name: subnetwork_mask(self.score(name), self.c) for name in self.masked_names}

    def used_by_task(self, task_id: int) -> Tensors:
        return self.task_mask(task_id)

    def test_weights(self, task_id: int) -> Tensors:
        masks = self.task_mask(task_id)
        return {name: torch.where(masks[name], self.masked_weight(name), 0.0) for name in self.masked_names}

    def training_weights(self) -> Tensors:
        """``w * m_t`` with the straight-through ``m_t``; frozen entries of ``w`` carry no gradient."""
        split = self.split_weights()
        return {
            name: split[name] * straight_through_mask(self.score(name), self.c) for name in self.masked_names
        }

    @torch.no_grad()
    def store_mask(self, task_id: int) -> None:
        for name, masks in self.task_masks.items():
            masks[task_id] = subnetwork_mask(self.score(name), self.c)
        self.mask_stored[task_id] = True

    # ---- the task ----------------------------------------------------------------------------
    def on_train_start(self) -> None:
        # Eq. 4: the weights of M_{t-1} are frozen at their values; all others train.
        previous = self.cumulative_mask(self.task_id)
        self.set_weight_split(
            trainable={name: ~used for name, used in previous.items()},
            used={name: torch.ones_like(used) for name, used in previous.items()},
        )

    def on_train_end(self) -> None:
        # Stored before the task loop's test, which uses the stored mask.
        self.store_mask(self.task_id)

    def extra_trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.scores.values())

    # ---- reporting ---------------------------------------------------------------------------
    def on_task_end(self, task_id: int) -> dict[str, float]:
        """``weights_used``: fraction of the masked weights in ``M_t`` (used by some task);
        ``capacity``: the fraction still free (``1 - weights_used``, as HAT's ``capacity``);
        ``task_weights``: fraction in ``m_t`` (about ``c``); ``reused``: fraction of ``m_t`` that
        earlier tasks already used (``m_t AND M_{t-1}`` over ``m_t``)."""
        if not bool(self.mask_stored[task_id]):
            self.store_mask(task_id)
        mask = {name: masks[task_id] for name, masks in self.task_masks.items()}
        previous = self.cumulative_mask(task_id)
        in_mask = sum(int(m.sum()) for m in mask.values())
        overlap = sum(int((mask[name] & previous[name]).sum()) for name in mask)
        return {
            "weights_used": (used := used_fraction(self.cumulative_mask(task_id + 1))),
            "capacity": 1.0 - used,
            "task_weights": used_fraction(mask),
            "reused": overlap / in_mask if in_mask else 0.0,
        }
