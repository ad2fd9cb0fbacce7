r"""DER and DER++: Dark Experience Replay (Buzzega et al., NeurIPS 2020), for TIL, CIL and DIL."""

from __future__ import annotations

import torch
from torch import Tensor

from clcore.algorithms.base import OptimizerFactory, SchedulerFactory
from clcore.algorithms.replay import ReplayAlgorithm, batch_task_ids
from clcore.backbones.base import CLBackbone
from clcore.benchmarks.base import CLBenchmark
from clcore.components.replay_memory import masked_cross_entropy, replay_logits, replay_targets
from clcore.config_rules import is_number
from clcore.heads.base import CLHeads
from clcore.metrics.names import task_metric


def logit_matching_loss(logits: Tensor, stored: Tensor, widths: Tensor) -> Tensor:
    r"""DER's $\lVert z - h_\theta(x) \rVert_2^2$ term (Buzzega et al. 2020, Eq. 3), as a mean over
    the compared entries.

    ``stored[i]`` holds the logits recorded with sample $i$ in its first ``widths[i]`` columns; only
    those are compared with ``logits[i]`` (in CIL the head has grown since: the columns of classes
    not yet seen when the logits were recorded are left out; in TIL and DIL every recorded column
    counts). The squared differences are averaged over the compared entries, as Mammoth's
    ``F.mse_loss`` averages over all entries when every column is recorded.
    """
    width = stored.shape[1]
    compared = torch.arange(width, device=stored.device) < widths.unsqueeze(1)
    squared = (logits[:, :width] - stored).pow(2)
    return torch.where(compared, squared, torch.zeros_like(squared)).sum() / compared.sum().clamp_min(1)


class DER(ReplayAlgorithm):
    r"""Dark Experience Replay (Buzzega et al., NeurIPS 2020, Sec. 3, Eq. 4/6; Algorithm 1).

    The memory keeps, by reservoir sampling, each sample with the logits $z = h_{\theta_t}(x)$ the
    network gave it when it was seen (before that step's update). The loss of a step is

    $$L = \mathrm{CE}(y, f_\theta(x))
    + \alpha\, \mathbb{E}_{(x', z') \sim M}\, \lVert z' - h_\theta(x') \rVert_2^2
    \quad \text{(DER, Eq. 4)}$$
    $$\;+\; \beta\, \mathbb{E}_{(x'', y'') \sim M}\, \mathrm{CE}(y'', f_\theta(x''))
    \quad \text{(DER++, Eq. 6; a second, independent memory batch)}$$

    ``beta=0`` is DER; ``DERpp`` is the same class with $\beta > 0$ by default.

    Class-incremental: the paper's network has one output per class of the whole data set from
    the start (Mammoth's convention, ``full_cil_head=true``, the default): the CE of task 1
    already pushes the logits of classes not yet seen down, the memory records those low logits
    with each sample, and matching them keeps later classes' logits low on old samples. That
    is how DER alone protects old classes in CIL. With the grown head (``full_cil_head=false``)
    a sample's record lacks the later classes' columns, nothing holds their logits down on old
    samples, and DER alone forgets as Finetuning does (measured: 19.7% on Split MNIST, the
    Finetuning level, against 77.4% (memory 200) and 89.8% (500) with the full head, seed 1). Predictions (validation, test) use the
    classes seen so far only, as Mammoth's evaluation does. The norm is taken
    as the mean squared error over the compared entries (``logit_matching_loss``): in CIL the
    logits recorded for a sample cover the classes seen when it was stored, and only those columns
    are compared. Memory samples go through their own task's head in TIL (``replay_logits``).

    Args:
        backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor: as ``CLAlgorithm``.
        memory_size: samples kept (200 or 500 in the paper's tables).
        alpha: $\alpha$, weight of the logit matching.
        beta: $\beta$, weight of the replayed labels' CE (0: DER).
        memory_batch_size: size of each memory batch; ``None``: the current batch's size.
        seed: seed of the memory's generator (``${seed}``); ``None``: ``torch.initial_seed()``.
        full_cil_head: in CIL, an output per class of the whole sequence from task 1 (above).
    """

    default_beta: float = 0.0

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        """The setting's rules (``CLAlgorithm``), the memory's options, ``alpha`` and ``beta``."""
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        for name, default in (("alpha", 0.3), ("beta", cls.default_beta)):
            value = options.get(name, default)
            if not is_number(value) or not 0 <= value < float("inf"):
                problems.append(f"algorithm.{name}={value!r}: must be a finite number >= 0")
        if not isinstance(options.get("full_cil_head", True), bool):
            problems.append(f"algorithm.full_cil_head={options['full_cil_head']!r}: must be true or false")
        return problems

    def __init__(
        self,
        backbone: CLBackbone,
        heads: CLHeads,
        optimizer: OptimizerFactory,
        num_tasks: int,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_monitor: str = "val/loss",
        memory_size: int = 200,
        alpha: float = 0.3,
        beta: float | None = None,
        memory_batch_size: int | None = None,
        seed: int | None = None,
        full_cil_head: bool = True,
    ) -> None:
        beta = self.default_beta if beta is None else beta
        super().__init__(
            backbone,
            heads,
            optimizer,
            num_tasks,
            lr_scheduler,
            lr_scheduler_monitor,
            memory_size,
            memory_batch_size,
            seed,
            options=dict(alpha=alpha, beta=beta, full_cil_head=full_cil_head),
        )
        self.alpha, self.beta = float(alpha), float(beta)
        self.full_cil_head = full_cil_head

    @property
    def _uses_full_head(self) -> bool:
        return self.full_cil_head and self.paradigm == "cil"

    def setup(self, stage: str) -> None:
        """CIL with ``full_cil_head``: before task 1's optimizer is built, the head gets every
        later task's classes (as Joint's ``all_at_once`` does)."""
        if stage != "fit" or not self._uses_full_head:
            return
        benchmark = self.trainer.datamodule
        if not isinstance(benchmark, CLBenchmark):
            raise TypeError(
                "DER's full CIL head needs the sequence's classes: call trainer.fit(model, datamodule=benchmark), "
                "or set full_cil_head=false"
            )
        for task_id in range(self.heads.num_tasks_seen, benchmark.num_tasks):
            self.heads.setup_task(task_id, benchmark.num_classes_of(task_id))

    def eval_logits(self, x: Tensor, task_id: int) -> Tensor:
        """With the full CIL head, the logits of the classes seen so far (tasks up to the current)."""
        logits = self(x, task_id)
        if self._uses_full_head:
            return logits[:, : sum(self.heads.classes_per_task[: self.task_id + 1])]
        return logits

    def _replay(self, size: int) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        replay = self.memory.sample(size)
        inputs = self.prepare_inputs(replay["inputs"], replay["task_ids"])
        logits, valid = replay_logits(self.heads, self.backbone(inputs), replay["task_ids"])
        return replay, logits, valid

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, labels, task_id = batch  # uint8 images (``ReplayAlgorithm``)
        x = self.prepare_inputs(images, batch_task_ids(task_id, images.shape[0], images.device))
        logits = self(x, task_id)
        loss = self.loss(logits, self.heads.targets(labels, task_id))
        if len(self.memory) > 0:
            size = self.memory_batch_size_for(images.shape[0])
            if self.alpha > 0:
                replay, replay_out, _ = self._replay(size)
                matching = logit_matching_loss(replay_out, replay["logits"], replay["logit_widths"])
                loss = loss + self.alpha * matching
            if self.beta > 0:
                replay, replay_out, valid = self._replay(size)
                targets = replay_targets(self.heads, replay["labels"], replay["task_ids"])
                loss = loss + self.beta * masked_cross_entropy(replay_out, valid, targets)
        self.remember(images, labels, task_id, logits=logits)
        if self.is_logging_step(batch_idx):
            self.log(task_metric("train/loss", task_id), loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss


class DERpp(DER):
    r"""DER++ (Buzzega et al. 2020, Eq. 6): DER plus $\beta\,\mathrm{CE}$ on a second memory batch."""

    default_beta: float = 0.5
