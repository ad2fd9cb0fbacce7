r"""ER: experience replay with a reservoir memory (Chaudhry et al. 2019, "On Tiny Episodic Memories
in Continual Learning"), for TIL, CIL and DIL."""

from __future__ import annotations

import torch
from torch import Tensor

from clcore.algorithms.replay import ReplayAlgorithm, batch_task_ids
from clcore.components.replay_memory import masked_cross_entropy, replay_logits, replay_targets
from clcore.metrics.names import task_metric


class ER(ReplayAlgorithm):
    r"""Experience Replay with a reservoir memory (Chaudhry et al. 2019, Algorithm 1 with Sec. 4's
    reservoir update).

    Every training step of task $t$ draws a batch $B_M$ from the memory $M$ and updates on the
    union with the current batch $B_n$:

    $$\theta \leftarrow \theta - \alpha \nabla_\theta\, \ell(B_n \cup B_M, \theta), \qquad
    \ell(B, \theta) = \frac{1}{|B|} \sum_{(x, y, k) \in B} \mathrm{CE}(f_\theta(x, k), y)$$

    then $B_n$ is offered to the memory (reservoir sampling, ``ReplayMemory``). With
    $|B_M| = |B_n|$ (the paper's setting, ``memory_batch_size=null``) this is
    $\tfrac12(\mathrm{CE}(B_n) + \mathrm{CE}(B_M))$: the mean over the union, as the paper's
    $\ell(B_n \cup B_M)$, in one forward pass (batch norm sees both, as in the paper's code).
    Before the memory holds anything the step is plain CE on $B_n$.

    Memory samples may come from several tasks: in TIL each goes through its own task's head, in
    CIL through the one grown head with its global target, in DIL through the shared head
    (``replay_logits``, ``replay_targets``).

    Args:
        backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor: as ``CLAlgorithm``.
        memory_size: samples kept, $|M|$ (Chaudhry et al. use tiny memories, 1-5 per class;
            200 here, a common reservoir size, e.g. Buzzega et al. 2020).
        memory_batch_size: $|B_M|$; ``None``: the current batch's size (the paper: both 10).
        seed: seed of the memory's generator (``${seed}`` in the config); ``None``: the global
            seed (``torch.initial_seed()``), read without consuming the global RNG.
    """

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, labels, task_id = batch  # uint8 images (``ReplayAlgorithm``)
        task_ids = batch_task_ids(task_id, images.shape[0], images.device)
        if len(self.memory) > 0:
            replay = self.memory.sample(self.memory_batch_size_for(images.shape[0]))
            task_ids = torch.cat([task_ids, replay["task_ids"]])
            labels_all = torch.cat([labels, replay["labels"]])
            images_all = torch.cat([images, replay["inputs"]])
        else:
            labels_all, images_all = labels, images
        inputs = self.prepare_inputs(images_all, task_ids)
        logits, valid = replay_logits(self.heads, self.backbone(inputs), task_ids)
        loss = masked_cross_entropy(logits, valid, replay_targets(self.heads, labels_all, task_ids))
        self.remember(images, labels, task_id)
        if self.is_logging_step(batch_idx):
            self.log(task_metric("train/loss", task_id), loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss
