r"""ER: experience replay with a reservoir memory (Chaudhry et al. 2019, "On Tiny Episodic Memories
in Continual Learning"), for TIL, CIL and DIL."""

from __future__ import annotations

import torch
from torch import Tensor

from clcore.algorithms.base import CLAlgorithm, OptimizerFactory, SchedulerFactory
from clcore.backbones.base import CLBackbone
from clcore.components.replay_memory import (
    ReplayMemory,
    masked_cross_entropy,
    replay_logits,
    replay_targets,
)
from clcore.heads.base import CLHeads
from clcore.metrics.names import task_metric


def replay_option_problems(options) -> list[str]:
    """The options every replay algorithm shares: ``memory_size``, ``memory_batch_size``, ``seed``."""
    problems = []
    size = options.get("memory_size", 200)
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        problems.append(
            f"algorithm.memory_size={size!r}: must be an integer > 0 (samples kept; e.g. 200 or 500)"
        )
    batch = options.get("memory_batch_size")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0):
        problems.append(
            f"algorithm.memory_batch_size={batch!r}: must be an integer > 0, or null for the training batch size"
        )
    seed = options.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        problems.append(f"algorithm.seed={seed!r}: must be an integer (the run seed: ${{seed}}) or null")
    return problems


def batch_task_ids(task_id: int | Tensor, batch_size: int, device) -> Tensor:
    """One task id per sample of a training batch (a batch carries one id or a tensor of them)."""
    if isinstance(task_id, Tensor):
        return task_id.to(device).long().expand(batch_size)
    return torch.full((batch_size,), int(task_id), dtype=torch.int64, device=device)


class ER(CLAlgorithm):
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

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        """The setting's rules (``CLAlgorithm``) and the memory's options."""
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        return problems + replay_option_problems(options)

    def __init__(
        self,
        backbone: CLBackbone,
        heads: CLHeads,
        optimizer: OptimizerFactory,
        num_tasks: int,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_monitor: str = "val/loss",
        memory_size: int = 200,
        memory_batch_size: int | None = None,
        seed: int | None = None,
    ) -> None:
        options = dict(memory_size=memory_size, memory_batch_size=memory_batch_size, seed=seed)
        super().__init__(backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor, options)
        self.memory_batch_size = memory_batch_size
        self.memory = ReplayMemory(memory_size, torch.initial_seed() if seed is None else seed)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, labels, task_id = batch
        if len(self.memory) == 0:
            loss = self.loss(self(x, task_id), self.heads.targets(labels, task_id))
        else:
            replay = self.memory.sample(self.memory_batch_size or x.shape[0])
            task_ids = torch.cat([batch_task_ids(task_id, x.shape[0], x.device), replay["task_ids"]])
            inputs = torch.cat([x, replay["inputs"].to(x.dtype)])
            logits, valid = replay_logits(self.heads, self.backbone(inputs), task_ids)
            targets = replay_targets(self.heads, torch.cat([labels, replay["labels"]]), task_ids)
            loss = masked_cross_entropy(logits, valid, targets)
        self.memory.add(x, labels, task_id)
        if self.is_logging_step(batch_idx):
            self.log(task_metric("train/loss", task_id), loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_task_end(self, task_id: int) -> dict[str, float]:
        """The memory's footprint (``memory_bytes``) and fill (``memory_samples``)."""
        return {"memory_bytes": float(self.memory.memory_bytes()), "memory_samples": float(len(self.memory))}
