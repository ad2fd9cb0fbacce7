"""PackNet: Adding Multiple Tasks to a Single Network by Iterative Pruning (Mallya & Lazebnik, CVPR 2018).

Every masked weight (the weight matrices and kernels of the backbone's ``Linear`` and ``Conv``
layers, ``clcore.components.weight_masks``) belongs to at most one task: ``owner = t`` (1-based)
or ``0``, free. Per task ``t`` (Sec. 3):

1. **train**: every free weight is claimed by ``t`` and trains; the weights of tasks ``< t`` are
   used in the forward pass but frozen;
2. **prune**: per layer, of the weights ``t`` claimed, the ``prune_ratio`` fraction with the
   smallest magnitude is released (``owner = 0``, value set to 0); every layer is pruned by the
   same fraction (Sec. 3: 50% or 75%);
3. **retrain**: the weights ``t`` kept train again (the released ones stay 0 and unused), then they
   are frozen for good.

At test time on task ``j`` only the weights of tasks ``1..j`` are used, the others are 0 (Sec. 3),
so later tasks cannot change task ``j``'s outputs (BWT is exactly 0).

How the phases fit one Lightning Trainer per task: ``trainer.max_epochs`` epochs train the free
weights, then PackNet adds ``retrain_epochs`` epochs to the same ``fit`` (the Trainer runs
``max_epochs + retrain_epochs`` epochs). The task is pruned at the start of the first retrain
epoch, where the optimiser's state is reset (the reference code retrains in a separate run with a
fresh optimiser) and its learning rate multiplied by ``retrain_lr_factor``. The reference
retrains at 1e-4 (``run_sequence.sh``), the rate its 20 training epochs end at after a step decay
from 1e-3; with clcore's constant learning rate and short default runs the default factor is 1
(retrain at the rate training ended at), and 0.1 reproduces the reference's ratio to the initial
rate. If the fit stops before the retrain phase (``trainer.max_steps``, early stopping, an
unbounded ``max_epochs``) or ``retrain_epochs=0``, the task is pruned at the end of its training,
without retraining.

The default run (``trainer.max_epochs=1``) thus trains one epoch, prunes 75% of the task's weights
and retrains one epoch; ``trainer.max_epochs`` needs no change for PackNet.

Biases and normalisation layers are not masked: as in the reference code (``train_biases`` and
``train_bn`` off), they train on the first task only and are fixed afterwards (batch norm keeps
task 1's statistics), so every task shares them unchanged.

Released weights start the next task at 0, as in the reference code (``prune.py``).
"""

from __future__ import annotations

import logging
import math
import weakref

import torch
from torch import Tensor

from clcore.algorithms.base import OptimizerFactory, SchedulerFactory
from clcore.backbones.base import CLBackbone
from clcore.components.weight_masks import (
    MaskStore,
    Tensors,
    WeightMaskAlgorithm,
    rounded_count,
    top_k_mask,
    used_fraction,
)
from clcore.config_rules import is_int, is_number
from clcore.heads.base import CLHeads

log = logging.getLogger(__name__)

# Ownership is stored as int16: room for 32767 tasks.
OWNER_DTYPE = torch.int16
MAX_TASKS = torch.iinfo(OWNER_DTYPE).max


def magnitude_prune(weight: Tensor, owner: Tensor, task: int, prune_ratio: float) -> Tensor:
    """One layer's ownership after pruning task ``task`` (1-based) by magnitude (Sec. 3).

    Of the ``n`` entries owned by ``task``, the ``round(prune_ratio * n)`` with the smallest
    ``|w|`` are released (owner 0): exactly ``n - round(prune_ratio * n)`` entries, the largest
    magnitudes, stay the task's. Entries of other owners are untouched.
    """
    eligible = owner == task
    n = int(eligible.sum())
    kept = top_k_mask(weight.abs(), n - rounded_count(prune_ratio, n), eligible)
    return torch.where(eligible & ~kept, torch.zeros_like(owner), owner)


class PackNet(WeightMaskAlgorithm):
    """PackNet (Mallya & Lazebnik, CVPR 2018), task-incremental, on a plain backbone.

    Args:
        backbone: a plain backbone (``MLP``, ``ResNet18``): its ``Linear``/``Conv`` weights are masked.
        heads: ``HeadsTIL``.
        optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor: as ``CLAlgorithm``.
        prune_ratio: fraction of a task's weights released per layer after training (Sec. 3; the
            paper uses 0.5 and 0.75).
        retrain_epochs: epochs of retraining after pruning, added to ``trainer.max_epochs``.
        retrain_lr_factor: the retrain phase's learning rate as a multiple of the optimiser's (1:
            the rate training ended at; the reference code's 1e-4 after 1e-3 is 0.1).
    """

    paradigm_reason = (
        "PackNet picks the weights of tasks 1..t by the task id at test time (Mallya & Lazebnik 2018, Sec. 3)"
    )

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        ratio = options.get("prune_ratio", 0.75)
        if not (is_number(ratio) and 0 <= ratio < 1):
            problems.append(
                f"algorithm.prune_ratio={ratio!r}: the fraction of a task's weights pruned per layer must be "
                f"in [0, 1) (the paper uses 0.5 or 0.75; 1 would leave the task no weights of its own)"
            )
        epochs = options.get("retrain_epochs", 1)
        if not (is_int(epochs) and epochs >= 0):
            problems.append(
                f"algorithm.retrain_epochs={epochs!r}: must be an integer >= 0 (epochs of retraining after "
                f"pruning, added to trainer.max_epochs; 0: prune at the end of training, no retraining)"
            )
        factor = options.get("retrain_lr_factor", 1.0)
        if not (is_number(factor) and math.isfinite(factor) and factor > 0):
            problems.append(
                f"algorithm.retrain_lr_factor={factor!r}: must be a finite number > 0 (the retrain phase's "
                f"learning rate over the optimizer's; 1: the same rate)"
            )
        num_tasks = options.get("num_tasks")
        if is_int(num_tasks) and num_tasks > MAX_TASKS:
            problems.append(f"benchmark.num_tasks={num_tasks}: PackNet stores at most {MAX_TASKS} owners")
        return problems

    def __init__(
        self,
        backbone: CLBackbone,
        heads: CLHeads,
        optimizer: OptimizerFactory,
        num_tasks: int,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_monitor: str = "val/loss",
        prune_ratio: float = 0.75,
        retrain_epochs: int = 1,
        retrain_lr_factor: float = 1.0,
    ) -> None:
        options = dict(
            prune_ratio=prune_ratio,
            retrain_epochs=retrain_epochs,
            retrain_lr_factor=retrain_lr_factor,
            num_tasks=num_tasks,
        )
        super().__init__(backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor, options)
        self.prune_ratio = float(prune_ratio)
        self.retrain_epochs = int(retrain_epochs)
        self.retrain_lr_factor = float(retrain_lr_factor)
        # owner[name]: 0 free, t the 1-based task that kept the weight; in every checkpoint
        self.owner = MaskStore(
            {name: torch.zeros(w.shape, dtype=OWNER_DTYPE) for name, w in self.masked_weights().items()}
        )
        self._pruned = False
        # Epochs of the train phase in the current fit (None: unbounded, no retrain phase)
        self._train_epochs: int | None = None
        self._extended_loop = None

    # ---- masks -------------------------------------------------------------------------------
    def used_by_task(self, task_id: int) -> Tensors:
        """The weights owned by tasks ``1..task_id + 1``."""
        last = task_id + 1
        return {name: (owner > 0) & (owner <= last) for name, owner in self.owner.items()}

    def test_weights(self, task_id: int) -> Tensors:
        """Task ``task_id``'s network: the weights owned by tasks ``1..task_id + 1``, zeros elsewhere."""
        return {
            name: torch.where(used, self.masked_weight(name), 0.0)
            for name, used in self.used_by_task(task_id).items()
        }

    def _split_for_current_task(self) -> None:
        task = self.task_id + 1
        self.set_weight_split(
            trainable={name: owner == task for name, owner in self.owner.items()},
            used={name: (owner > 0) & (owner <= task) for name, owner in self.owner.items()},
        )

    # ---- the phases --------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        # The retrain phase follows trainer.max_epochs in the same fit (module docstring).
        loop = self.trainer.fit_loop
        if self._extended_loop is not None and self._extended_loop() is loop:
            return  # a second fit on the same Trainer: already extended
        self._extended_loop = weakref.ref(loop)
        epochs = loop.max_epochs
        if epochs is None or epochs < 0:
            self._train_epochs = None
        else:
            self._train_epochs = epochs
            loop.max_epochs = epochs + self.retrain_epochs

    @torch.no_grad()
    def on_train_start(self) -> None:
        # Step 1: the weights free after the earlier tasks' pruning train for this task (Sec. 3).
        task = self.task_id + 1
        for _, owner in self.owner.items():
            owner.masked_fill_(owner == 0, task)
        self._pruned = False
        self._split_for_current_task()

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        if (
            not self._pruned
            and self._train_epochs is not None
            and self.retrain_epochs > 0
            and self.current_epoch >= self._train_epochs
        ):
            self.prune()
            self._start_retraining()

    def on_train_end(self) -> None:
        if not self._pruned:
            if self.retrain_epochs > 0:
                log.warning(
                    "PackNet, task %d: training stopped before the retrain phase (trainer.max_steps, early "
                    "stopping or an unbounded trainer.max_epochs); the task is pruned without retraining",
                    self.task_id + 1,
                )
            self.prune()

    @torch.no_grad()
    def prune(self) -> None:
        """Step 2: release the ``prune_ratio`` smallest-magnitude weights of this task, per layer."""
        task = self.task_id + 1
        for name, owner in self.owner.items():
            weight = self.masked_weight(name)
            pruned = magnitude_prune(weight, owner, task, self.prune_ratio)
            # released weights are 0 (and stay 0 while the kept ones retrain): reference prune.py
            weight.masked_fill_((owner == task) & (pruned == 0), 0.0)
            owner.copy_(pruned)
        self._pruned = True
        self._split_for_current_task()

    def _start_retraining(self) -> None:
        # Step 3 with a fresh optimiser state at a lower rate, as the reference's separate retrain run
        for optimizer in self.trainer.optimizers:
            optimizer.state.clear()
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * self.retrain_lr_factor

    # ---- reporting ---------------------------------------------------------------------------
    def on_task_end(self, task_id: int) -> dict[str, float]:
        """``weights_used``: fraction of the masked weights owned by some task; ``capacity``: the
        fraction still free (``1 - weights_used``, what HAT's ``capacity`` also measures: room for
        the tasks to come); ``task_weights``: fraction owned by task ``task_id`` (0-based) itself."""
        task = task_id + 1
        used = used_fraction({name: owner > 0 for name, owner in self.owner.items()})
        return {
            "weights_used": used,
            "capacity": 1.0 - used,
            "task_weights": used_fraction({name: owner == task for name, owner in self.owner.items()}),
        }
