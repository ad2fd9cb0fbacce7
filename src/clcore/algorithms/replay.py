r"""``ReplayAlgorithm``: what every rehearsal method shares (ER, DER, DER++, A-GEM, iCaRL, GDumb,
ER-ACE): a ``ReplayMemory``, its options and their rules, uint8 storage, and its footprint.

The memory stores the benchmark's uint8 images, not the prepared float inputs: a quarter of the
bytes (far less where a backbone's ``model_input`` enlarges images, e.g. CLIP's 224 px), and a
memory sample is prepared exactly as a fresh one, with its own task's transform (Permuted
MNIST's permutation of its task). So a replay algorithm receives its training batches as the
benchmark's uint8 images (``prepares_training_inputs``; ``CLBenchmark.on_after_batch_transfer``
leaves them alone) and prepares the current batch together with the memory batch in one call,
``prepare_inputs``. Validation and test batches arrive prepared, as for every algorithm.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clcore.algorithms.base import CLAlgorithm, OptimizerFactory, SchedulerFactory
from clcore.backbones.base import CLBackbone
from clcore.benchmarks.base import CLBenchmark
from clcore.components.replay_memory import ReplayMemory, global_class_ids
from clcore.config_rules import is_int
from clcore.heads.base import CLHeads


def batch_task_ids(task_id: int | Tensor, batch_size: int, device) -> Tensor:
    """One task id per sample of a training batch (a batch carries one id or a tensor of them)."""
    if isinstance(task_id, Tensor):
        return task_id.to(device).long().expand(batch_size)
    return torch.full((batch_size,), int(task_id), dtype=torch.int64, device=device)


class ReplayAlgorithm(CLAlgorithm):
    """A ``CLAlgorithm`` with a replay memory; a subclass writes its ``training_step`` on it.

    Args:
        backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor: as ``CLAlgorithm``.
        memory_size: samples kept, $m$.
        memory_batch_size: size of a memory batch; ``None``: the current batch's size (the
            issue's and the papers' setting: a replay step doubles the batch).
        seed: seed of the memory's generator (``${seed}`` in the config); ``None``: the global
            seed (``torch.initial_seed()``), read without consuming the global RNG.
        options: the subclass's own keyword arguments (``CLAlgorithm``).
    """

    # Training batches arrive as the benchmark's uint8 images (see the module docstring).
    prepares_training_inputs = True
    # The memory's policy (``ReplayMemory``); GDumb: ``balanced``.
    memory_policy = "reservoir"

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        """The setting's rules (``CLAlgorithm``) and the memory's options."""
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        size = options.get("memory_size", 200)
        if not is_int(size) or size <= 0:
            problems.append(
                f"algorithm.memory_size={size!r}: must be an integer > 0 (samples kept; e.g. 200 or 500)"
            )
        batch = options.get("memory_batch_size")
        if batch is not None and (not is_int(batch) or batch <= 0):
            problems.append(
                f"algorithm.memory_batch_size={batch!r}: must be an integer > 0, or null for the training batch size"
            )
        seed = options.get("seed")
        if seed is not None and not is_int(seed):
            problems.append(f"algorithm.seed={seed!r}: must be an integer (the run seed: ${{seed}}) or null")
        return problems

    @classmethod
    def benchmark_problems(cls, options, benchmark: CLBenchmark) -> list[str]:
        """The memory's limit, read with the loaded benchmark (pre-flight and constructor-free).

        A memory larger than the sequence's training set can never fill: every sample would be
        kept, which is Joint training by another name, and the memory's footprint would be
        allocated for nothing.
        """
        size = options.get("memory_size", 200)
        if not is_int(size) or size <= 0:
            return []  # reported by config_problems
        total = sum(len(benchmark.task_split("train", t).labels) for t in range(benchmark.num_tasks))
        if size > total:
            return [
                f"algorithm.memory_size={size} exceeds the {total} training samples of the whole sequence: "
                f"the memory would keep every sample (Joint training). Choose at most {total}"
            ]
        return []

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
        options: dict | None = None,
    ) -> None:
        options = {
            **(options or {}),
            "memory_size": memory_size,
            "memory_batch_size": memory_batch_size,
            "seed": seed,
        }
        super().__init__(backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor, options)
        self.memory_batch_size = memory_batch_size
        self.memory = ReplayMemory(
            memory_size, torch.initial_seed() if seed is None else seed, policy=self.memory_policy
        )

    def memory_batch_size_for(self, batch_size: int) -> int:
        return self.memory_batch_size or batch_size

    def prepare_inputs(self, images: Tensor, task_ids: Tensor) -> Tensor:
        """The model's inputs for stored images: each sample with its own task's transform.

        Through the benchmark of the running ``fit`` (``CLBenchmark.prepare_mixed_batch``); with
        plain dataloaders (no benchmark) the batches are the inputs already and pass unchanged.
        """
        trainer = self._trainer
        benchmark = trainer.datamodule if trainer is not None else None
        if isinstance(benchmark, CLBenchmark):
            return benchmark.prepare_mixed_batch(images, task_ids)
        return images

    def class_ids(self, labels: Tensor, task_ids: Tensor) -> Tensor:
        """One id per class of the sequence (``global_class_ids``)."""
        return global_class_ids(self.heads, labels, task_ids)

    def remember(self, images: Tensor, labels: Tensor, task_id, logits: Tensor | None = None) -> None:
        """Offer the current batch (its uint8 images) to the memory."""
        task_ids = batch_task_ids(task_id, images.shape[0], images.device)
        self.memory.add(images, labels, task_ids, logits=logits, class_ids=self.class_ids(labels, task_ids))

    def on_task_end(self, task_id: int) -> dict[str, float]:
        """The memory's footprint (``memory_bytes``) and fill (``memory_samples``)."""
        return {"memory_bytes": float(self.memory.memory_bytes()), "memory_samples": float(len(self.memory))}
