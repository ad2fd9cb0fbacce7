r"""iCaRL: Incremental Classifier and Representation Learning (Rebuffi et al., CVPR 2017), for CIL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clcore.algorithms.base import OptimizerFactory, SchedulerFactory
from clcore.algorithms.replay import ReplayAlgorithm, batch_task_ids
from clcore.backbones.base import CLBackbone
from clcore.benchmarks.base import CLBenchmark
from clcore.components.herding import herding_selection
from clcore.components.previous_model import PreviousModel
from clcore.components.replay_memory import replay_targets
from clcore.config_rules import is_int
from clcore.heads.base import CLHeads
from clcore.metrics.names import task_metric


def icarl_loss(logits: Tensor, targets: Tensor, old_logits: Tensor | None = None) -> Tensor:
    r"""iCaRL's representation-learning loss (Rebuffi et al. 2017, Algorithm 3), a mean over entries.

    With $g_y(x) = \sigma(\text{logit}_y(x))$ over the classes $y = 1, \dots, t$ seen so far, of which
    $1, \dots, s - 1$ are old, and $q_i^y$ the previous network's sigmoid outputs:

    $$\ell(\Theta) = -\sum_i \Bigl[\sum_{y=s}^{t} \delta_{y = y_i} \log g_y(x_i)
    + \delta_{y \ne y_i} \log(1 - g_y(x_i))
    \;+\; \sum_{y=1}^{s-1} q_i^y \log g_y(x_i) + (1 - q_i^y) \log(1 - g_y(x_i))\Bigr]$$

    i.e. binary cross-entropy against one-hot targets for the new classes and against the old
    network's outputs for the old ones (distillation), for every training input, new sample or
    exemplar alike. The sum is taken as a mean over samples and classes, as in the authors' code
    (Lasagne's ``binary_crossentropy(...).mean()``) and Mammoth's
    ``binary_cross_entropy_with_logits``: a constant factor.

    Args:
        logits: ``[N, t]`` the network's logits over every seen class (gradients flow).
        targets: ``[N]`` global class ids in ``[0, t)``.
        old_logits: ``[N, s - 1]`` the previous network's logits on the same inputs, or ``None``
            (the first task: one-hot targets over every column).
    """
    soft = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    if old_logits is not None:
        old = old_logits.shape[1]
        soft = torch.cat([torch.sigmoid(old_logits.detach().to(logits.dtype)), soft[:, old:]], dim=1)
    return F.binary_cross_entropy_with_logits(logits, soft)


def nearest_mean_logits(features: Tensor, class_means: Tensor) -> Tensor:
    r"""Nearest-mean-of-exemplars scores (Algorithm 1): $-\lVert \varphi(x) - \mu_y \rVert^2$ per class.

    $\varphi(x)$ is the L2-normalised feature of each sample; ``class_means`` ``[C, D]`` are the
    $\mu_y$ (normalised, ``ICaRL.update_class_means``). The argmax is
    $y^* = \operatorname{argmin}_y \lVert \varphi(x) - \mu_y \rVert$; the squared distance is the
    authors' score (``cdist(..., 'sqeuclidean')``). Returns ``[B, C]``.
    """
    phi = F.normalize(features, dim=1)
    squared = phi.pow(2).sum(1, keepdim=True) - 2 * phi @ class_means.T + class_means.pow(2).sum(1)
    return -squared


class ICaRL(ReplayAlgorithm):
    r"""iCaRL (Rebuffi et al., CVPR 2017, Sec. 2; Algorithms 1-5), class-incremental.

    - **Memory** (Algorithms 2, 4, 5): at most $K$ = ``memory_size`` exemplars in all. After task
      $t$'s training, with $C$ classes seen, every class keeps $m = \lfloor K / C \rfloor$: an old
      class's exemplar set is cut to its first $m$ (Algorithm 5: herding order is priority order),
      and each new class gets $m$ exemplars chosen by herding (``herding_selection``) on the
      L2-normalised backbone features of all its training samples, in eval mode. The memory keeps
      the benchmark's uint8 images (``ReplayAlgorithm``), class by class in priority order.
    - **Training** (Algorithm 3, ``icarl_loss``): sigmoid binary cross-entropy over every seen
      class; one-hot targets for the new classes, the previous network's sigmoid outputs for the
      old ones, on every training input. The paper trains on the union of the new data and the
      exemplars; here, as for every replay method of clcore, a step takes the current batch plus
      a memory batch of its own size (``memory_batch_size=null``), drawn uniformly from the
      exemplars by the memory's own generator. The previous network is a frozen copy (eval mode)
      of backbone and heads taken before the heads grow for task $t$; it scores the inputs on
      the fly, which is what the authors' code does (``func_pred`` on each batch) and, without
      data augmentation, what recording them once would give.
    - **Classification** (Algorithm 1, ``nearest_mean_logits``): the test prediction is the class
      whose mean of normalised exemplar features (re-normalised, Sec. 2.1) is nearest to the
      sample's normalised feature. The means are computed once per task, right after the memory
      is updated (``on_train_end``, under ``torch.no_grad``, in eval mode, in batches), and cached
      in the ``class_means`` buffer. The authors' code also averages in the features of
      horizontally flipped exemplars; clcore's benchmarks have no flip transform (and flipping is
      not label-preserving for digits), so only the exemplars themselves are used.
      While a task trains, its new classes have no exemplars yet: validation (``val/loss``,
      ``val/acc``, what a scheduler monitors) and a zero-shot test before training
      (``eval.zero_shot``) use the network's own outputs, the classifier being trained.

    Nothing here draws from the global RNG: herding and the class means are deterministic, and the
    memory batches come from the memory's own generator.

    Resume: the memory and the class means are buffers of this module, saved in every per-task
    checkpoint. The frozen previous network is not saved: as LwF's teacher, it is copied in
    ``setup_task`` from the model's weights at that point, which after a resume are those restored
    from the previous task's checkpoint, the end-of-task weights the uninterrupted run copied.

    Args:
        backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor: as ``CLAlgorithm``.
        memory_size: $K$, exemplars kept in all (the paper: 2000 on iCIFAR-100, 20000 on iILSVRC).
        memory_batch_size: size of a step's memory batch; ``None``: the current batch's size.
        seed: seed of the memory's generator (``${seed}``); ``None``: ``torch.initial_seed()``.
    """

    supported_paradigms = ("cil",)
    paradigm_reason = (
        "iCaRL is a class-incremental method (Rebuffi et al. 2017, Sec. 1): its classifier is the "
        "nearest mean of exemplars over every class seen, without a task id, and its loss splits the "
        "outputs into new classes (one-hot targets) and old ones (distilled), which DIL, where every "
        "task has the same classes, does not have"
    )
    # Exemplars prepared and passed through the backbone at once for the class means.
    feature_batch_size: int = 512

    @classmethod
    def benchmark_problems(cls, options, benchmark: CLBenchmark) -> list[str]:
        """The memory's limits (``ReplayAlgorithm``), and at least one exemplar per class at the end.

        With $K < C$ classes, $\\lfloor K / C \\rfloor = 0$: classes would keep no exemplar and
        have no mean to classify by.
        """
        problems = super().benchmark_problems(options, benchmark)
        size = options.get("memory_size", 200)
        if not is_int(size) or size <= 0:
            return problems  # reported by config_problems
        classes = sum(benchmark.num_classes_of(t) for t in range(benchmark.num_tasks))
        if size < classes:
            problems.append(
                f"algorithm.memory_size={size} is less than the sequence's {classes} classes: iCaRL keeps "
                f"memory_size // classes exemplars per class, here 0, and a class without exemplars has no "
                f"mean to classify by. Choose at least {classes}"
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
        memory_size: int = 200,
        memory_batch_size: int | None = None,
        seed: int | None = None,
    ) -> None:
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
        )
        # [classes with exemplars, D]: the normalised means of Algorithm 1, in global class order.
        self.register_buffer("class_means", torch.empty(0))
        self.previous = PreviousModel()  # the old network (``clcore.components.previous_model``)

    @property
    def previous_network(self) -> nn.Module | None:
        """``ModuleDict(backbone=, heads=)``: the frozen model at the end of the previous task."""
        return self.previous.network

    # ---- the per-task protocol ---------------------------------------------------------------
    def setup_task(self, task_id: int, num_classes: int) -> None:
        self.previous.take(task_id, self.backbone, self.heads)  # before the heads grow: old classes only
        super().setup_task(task_id, num_classes)

    def on_train_start(self) -> None:
        # Lightning moved the model to its device; the unregistered copy follows here.
        self.previous.to(self.device)

    def on_train_end(self) -> None:
        # After the last epoch (and after a callback restored the best epoch's weights: callbacks
        # hear on_train_end first), before the task's test, which classifies by these means.
        with self._evaluation_mode(), torch.no_grad():
            self.update_exemplars()
            self.update_class_means()

    def on_task_end(self, task_id: int) -> dict[str, float]:
        """The memory's footprint and fill (``ReplayAlgorithm``) and $m$, exemplars per class."""
        per_class = self.memory.memory_size // self.heads.num_classes_seen
        return {**super().on_task_end(task_id), "exemplars_per_class": float(per_class)}

    # ---- training (Algorithm 3) --------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, labels, task_id = batch  # uint8 images (``ReplayAlgorithm``)
        task_ids = batch_task_ids(task_id, images.shape[0], images.device)
        if len(self.memory) > 0:
            replay = self.memory.sample(self.memory_batch_size_for(images.shape[0]))
            images = torch.cat([images, replay["inputs"]])
            labels = torch.cat([labels, replay["labels"]])
            task_ids = torch.cat([task_ids, replay["task_ids"]])
        x = self.prepare_inputs(images, task_ids)
        logits = self.heads(self.backbone(x), self.task_id)
        old_logits = None
        if self.previous_network is not None:
            with torch.no_grad():
                previous = self.previous_network
                old_logits = previous["heads"](previous["backbone"](x), self.task_id - 1)
        loss = icarl_loss(logits, replay_targets(self.heads, labels, task_ids), old_logits)
        if self.is_logging_step(batch_idx):
            self.log(task_metric("train/loss", task_id), loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    # ---- the exemplar memory (Algorithms 2, 4, 5) -------------------------------------------
    def update_exemplars(self) -> None:
        """Reduce the old classes' sets to $m$, then add $m$ herded exemplars of each new class."""
        per_class = self.memory.memory_size // self.heads.num_classes_seen
        kept = self._reduced_memory(per_class)
        images, labels, task_ids, features = self._task_samples()
        class_ids = self.class_ids(labels, task_ids)
        chosen = []
        for c in class_ids.unique().tolist():  # a few classes per task: one herding each
            rows = (class_ids == c).nonzero().squeeze(1)
            chosen.append(rows[herding_selection(features[rows], per_class)])
        chosen = torch.cat(chosen)
        new = {"inputs": images, "labels": labels, "task_ids": task_ids, "class_ids": class_ids}
        new = {name: value[chosen] for name, value in new.items()}
        if kept is not None:
            new = {name: torch.cat([kept[name].to(value.device), value]) for name, value in new.items()}
        self.memory.set_contents(new["inputs"], new["labels"], new["task_ids"], new["class_ids"])

    def _reduced_memory(self, per_class: int) -> dict[str, Tensor] | None:
        """The first ``per_class`` held exemplars of every class (their herding order), or None."""
        if len(self.memory) == 0:
            return None
        held = self.memory.contents()
        class_ids = held["class_ids"]
        # each slot's rank within its class, counted in slot order (the order they were herded in)
        counts = F.one_hot(class_ids).cumsum(0)
        rank = counts.gather(1, class_ids.unsqueeze(1)).squeeze(1) - 1
        keep = rank < per_class
        return {name: value[keep] for name, value in held.items()}

    def _task_samples(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Every training sample of the current task: ``(images, labels, task_ids, features)``.

        The images as the memory stores them (the loader's, for a replay algorithm the benchmark's
        uint8 images), the features of their prepared inputs. Under data parallelism each process
        reads its shard, and the shards are gathered, so every process herds the same exemplars.
        """
        parts = []
        for images, labels, task_id in self.current_task_train_batches():
            task_ids = batch_task_ids(task_id, labels.shape[0], labels.device)
            features = self.backbone(self._inputs_of_training_images(images, task_ids))
            parts.append((images, labels, task_ids, features))
        if not parts:
            raise RuntimeError("ICaRL: the task has no training samples to choose exemplars from")
        return tuple(self._gathered(torch.cat(column)) for column in zip(*parts, strict=True))

    def _inputs_of_training_images(self, images: Tensor, task_ids: Tensor) -> Tensor:
        # The training batches are the benchmark's uint8 images while the trainer is in its
        # training stage (as in on_train_end); prepared floats from a benchmark could not be stored
        # next to them and would be prepared a second time when replayed.
        trainer = self._trainer
        if images.is_floating_point() and isinstance(getattr(trainer, "datamodule", None), CLBenchmark):
            raise RuntimeError(
                "ICaRL: the task's training batches arrived prepared (floats); the memory stores the "
                "benchmark's uint8 images. Choose exemplars inside fit's training stage (on_train_end)"
            )
        return self.prepare_inputs(images, task_ids)

    def _gathered(self, values: Tensor) -> Tensor:
        """``values`` of every process, concatenated in rank order (itself in a single process)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return values
        strategy = trainer.strategy
        sizes = strategy.all_gather(torch.tensor(values.shape[0], device=values.device)).reshape(-1).tolist()
        padded = values.new_zeros((max(sizes), *values.shape[1:]))
        padded[: values.shape[0]] = values
        gathered = strategy.all_gather(padded)  # [world, largest, ...]
        return torch.cat([gathered[rank, :size] for rank, size in enumerate(sizes)])

    # ---- classification (Algorithm 1) --------------------------------------------------------
    def update_class_means(self) -> None:
        r"""$\mu_y$: the mean of the normalised features of class $y$'s exemplars, re-normalised.

        One pass over the memory in batches; the sums per class are a one-hot matrix product (no
        atomic adds: the same result on every run). Re-normalising makes the division by the
        class's exemplar count unnecessary.
        """
        held = self.memory.contents()
        num_classes = self.heads.num_classes_seen
        sums = None
        for start in range(0, len(self.memory), self.feature_batch_size):
            rows = slice(start, start + self.feature_batch_size)
            x = self.prepare_inputs(held["inputs"][rows], held["task_ids"][rows])
            phi = F.normalize(self.backbone(x), dim=1)
            part = F.one_hot(held["class_ids"][rows], num_classes).to(phi.dtype).T @ phi
            sums = part if sums is None else sums + part
        self.class_means = F.normalize(sums, dim=1)

    def eval_logits(self, x: Tensor, task_id: int) -> Tensor:
        """NME scores over every seen class once each has a mean; before that (a task's validation,
        a zero-shot test), the network's outputs."""
        features = self.backbone(x)
        if self.class_means.shape[0] != self.heads.num_classes_seen:
            return self.heads(features, task_id)
        return nearest_mean_logits(features, self.class_means)

    # ---- helpers -----------------------------------------------------------------------------
    @contextmanager
    def _evaluation_mode(self) -> Iterator[None]:
        """Eval mode (no dropout, batch-norm running statistics) for features; modes restored after."""
        modes = {module: module.training for module in self.modules()}
        self.eval()
        try:
            yield
        finally:
            for module, training in modes.items():
                module.training = training

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # The class means' shape grows with the classes: take the saved one before copying.
        saved = state_dict.get(prefix + "class_means")
        if saved is not None and saved.shape != self.class_means.shape:
            self.class_means = torch.empty_like(saved, device=self.class_means.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
