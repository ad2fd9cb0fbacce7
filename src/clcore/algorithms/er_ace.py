r"""ER-ACE: experience replay with the asymmetric cross-entropy (Caccia et al., ICLR 2022, "New
Insights on Reducing Abrupt Representation Change in Online Continual Learning"), for TIL, CIL
and DIL."""

from __future__ import annotations

import torch
from torch import Tensor

from clcore.algorithms.replay import ReplayAlgorithm, batch_task_ids
from clcore.components.replay_memory import masked_cross_entropy, replay_logits, replay_targets
from clcore.metrics.names import task_metric


def present_classes_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    r"""ER-ACE's loss on the incoming batch (Caccia et al. 2022, Sec. 4): the mean cross-entropy
    over the logits of the classes present in the batch only,

    $$\mathcal{L}_{ce}^{C_{curr}}(X_{in}) = -\frac{1}{|X_{in}|} \sum_{(x, y) \in X_{in}}
    \log \frac{e^{z_y(x)}}{\sum_{c \in C_{curr}} e^{z_c(x)}}, \qquad
    C_{curr} = \{y : (x, y) \in X_{in}\},$$

    so the incoming samples push no logit of an absent class (an old class) down: those columns
    get no gradient from this term. ``logits [B, C]``, ``targets [B]`` (column indices). The set
    is read on the device (a scatter into a ``[C]`` mask), without a host synchronisation.
    """
    present = targets.new_zeros(logits.shape[1], dtype=bool).scatter_(0, targets, True)
    return masked_cross_entropy(logits, present.expand_as(logits), targets)


class ERACE(ReplayAlgorithm):
    r"""ER-ACE (Caccia et al., ICLR 2022, Sec. 4, the asymmetric cross-entropy, "ER-ACE").

    Every step of task $t$ draws a batch $X_{bf}$ from the reservoir memory and minimises

    $$\mathcal{L} = \mathcal{L}_{ce}^{C_{curr}}(X_{in}) + \mathcal{L}_{ce}^{C_{old} \cup C_{curr}}(X_{bf})$$

    the incoming batch's CE over the classes present in it (``present_classes_cross_entropy``)
    plus the memory batch's CE over every class seen (each sample under its own task's head in
    TIL: ``replay_logits``); the two terms are summed with weight 1, as in the authors' code
    (``pclucas14/AML``, ``methods/er_ace.py`` and ``methods/er.py``) and Mammoth's ``er_ace``.
    Then $X_{in}$ is offered to the memory (reservoir). The incoming data then never lowers the
    logits of old classes, which the paper shows is what drives the abrupt change of the old
    classes' representations when a new task starts (Sec. 3-4); the memory's term still learns
    to tell old from new classes.

    Conventions, following the authors' task-aware code and Mammoth's ``er_ace``:

    - replay and the mask start with the second task: during the first task there is no old
      class to protect, and the step is the plain CE on $X_{in}$;
    - the memory batch is drawn uniformly from the whole memory (Mammoth; the reservoir also
      holds the current task's samples), of the current batch's size by default;
    - the two batches go through the network in separate forward passes (both codes), so batch
      normalisation sees each on its own;
    - the authors' code also unmasks the classes not seen yet (``mask[:, seen.max():] = 1``), for
      a head that has every class's output from the start; clcore's CIL head grows with the
      tasks and has no columns for unseen classes, so $C_{curr}$ is exactly the batch's classes.

    Paradigms: the asymmetry is a CIL matter (one head over every class seen). In TIL each task
    has its own head and the incoming batch's logits are those of its own task's classes only,
    so there are no old-class logits to spare: the current batch's term is the plain CE over its
    head, and ER-ACE is ER with the two losses summed instead of averaged. In DIL every task
    shares the same classes, so there are no old classes either: the plain CE on both batches.

    Args:
        backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor: as ``CLAlgorithm``.
        memory_size: samples kept (Mammoth's tables: 200, 500, 5120; the paper's online runs:
            20 to 100 per class).
        memory_batch_size: $|X_{bf}|$; ``None``: the current batch's size (the paper: 10 and 10).
        seed: seed of the memory's generator (``${seed}`` in the config); ``None``: the global
            seed (``torch.initial_seed()``), read without consuming the global RNG.
    """

    def _replay_loss(self, inputs: Tensor, labels: Tensor, task_ids: Tensor) -> Tensor:
        """$\\mathcal{L}_{ce}(X_{bf})$ over every seen class (each sample's own head in TIL)."""
        logits, valid = replay_logits(self.heads, self.backbone(inputs), task_ids)
        return masked_cross_entropy(logits, valid, replay_targets(self.heads, labels, task_ids))

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, labels, task_id = batch  # uint8 images (``ReplayAlgorithm``)
        task_ids = batch_task_ids(task_id, images.shape[0], images.device)
        size = images.shape[0]
        replaying = self.task_id > 0 and len(self.memory) > 0
        if replaying:
            replay = self.memory.sample(self.memory_batch_size_for(size))
            # one preparation for both batches, each sample with its own task's transform
            inputs = self.prepare_inputs(
                torch.cat([images, replay["inputs"]]), torch.cat([task_ids, replay["task_ids"]])
            )
            x = inputs[:size]
        else:
            x = self.prepare_inputs(images, task_ids)
        logits = self(x, task_id)
        targets = self.heads.targets(labels, task_id)
        if self.paradigm == "cil" and self.task_id > 0:
            loss = present_classes_cross_entropy(logits, targets)
        else:  # TIL, DIL, and CIL's first task: no old class to protect
            loss = self.loss(logits, targets)
        if replaying:
            loss = loss + self._replay_loss(inputs[size:], replay["labels"], replay["task_ids"])
        self.remember(images, labels, task_id)
        if self.is_logging_step(batch_idx):
            self.log(task_metric("train/loss", task_id), loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss
