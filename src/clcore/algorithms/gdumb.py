r"""GDumb: a greedy class-balanced sampler and a learner trained from scratch on its memory alone
(Prabhu, Torr & Dokania, ECCV 2020, "GDumb: A Simple Approach that Questions Our Progress in
Continual Learning"), for TIL, CIL and DIL."""

from __future__ import annotations

import torch
from torch import Tensor

from clcore.algorithms.base import NonFiniteLossError, OptimizerFactory, SchedulerFactory
from clcore.algorithms.replay import ReplayAlgorithm
from clcore.backbones.base import CLBackbone
from clcore.components.replay_memory import masked_cross_entropy, replay_logits, replay_targets
from clcore.config_rules import is_int
from clcore.heads.base import CLHeads
from clcore.metrics.names import task_metric

DEFAULT_MEMORY_EPOCHS = 100


def _is_plateau(scheduler) -> bool:
    """Whether a scheduler, as a config (``_target_``) or as the factory built from it, is a plateau one."""
    if isinstance(scheduler, dict):
        target = scheduler.get("_target_")
        return isinstance(target, str) and target.rsplit(".", 1)[-1] == "ReduceLROnPlateau"
    built = getattr(scheduler, "func", scheduler)  # a Hydra ``_partial_`` is a functools.partial
    return isinstance(built, type) and issubclass(built, torch.optim.lr_scheduler.ReduceLROnPlateau)


class GDumb(ReplayAlgorithm):
    r"""GDumb (Prabhu et al., ECCV 2020, Sec. 3): Greedy sampler and Dumb learner.

    **Sampler.** Every training sample of the stream is offered once to a memory of $k$ samples
    (``memory_size``) that the sampler keeps class-balanced (Algorithm 1; ``ReplayMemory`` with
    ``policy="balanced"``): a sample of class $y$ is stored while $|M_y| < k / |\mathcal{Y}|$,
    $\mathcal{Y}$ the classes seen so far, and when the memory is full a random sample of the
    largest class makes room for it. In TIL and CIL a class is one class of the sequence
    (``global_class_ids``). In DIL every task has the same labels, and counting those would
    freeze the memory on the first domain: once it holds $k / |\mathcal{Y}|$ samples of each
    label, no later domain's sample is ever stored (the official code's loader builds class
    splits only, and Mammoth lists GDumb for class- and task-IL only). Here a DIL class is a
    (task, label) pair (``class_ids``), so the memory stays balanced over every domain's classes
    seen so far. The stream never trains the learner.

    **Learner.** Whenever the model is queried (an evaluation) a network is trained *from
    scratch* on the memory alone (Sec. 3). The task loop tests after every task, so after every
    task the backbone and heads are set back to their initial weights and trained for
    ``memory_epochs`` passes over the memory with cross-entropy: in CIL through the one grown
    head over every class seen so far, which is the paper's masking of the logits to the classes
    seen; in TIL each sample through its own task's head and tested with its task's head, the
    paper's task mask; in DIL through the shared head (``replay_logits``). The model after task
    $t$ is a function of the memory after task $t$ only (and of the initial weights and the
    seed), never of the model before it.

    **Mechanics.** A task's ``fit`` is the stream pass: one epoch (the sampler is online: each
    sample is offered once, so ``trainer.max_epochs`` does not apply) whose ``training_step``
    offers the batch's uint8 images to the memory and returns no loss (manual optimisation:
    Lightning's optimizer is built but never stepped). At the stream's last batch, inside that
    step, the learner is reset and trained on the memory (``train_on_memory``), so the epoch's
    validation, its logged ``val/*`` metrics, monitoring callbacks and the test all see the
    retrained learner. (Should a fit end without reaching that batch, ``on_train_end`` trains it.)
    The learner's loop is plain PyTorch: mini-batches of the memory by batched indexing, each
    prepared with its own task's transform (``prepare_inputs``); an optimizer from the run's
    factory (``optimizer``), fresh each time, as the paper's learner starts afresh; the run's
    ``lr_scheduler``, if any, stepped after every memory epoch; the order of each memory epoch
    drawn from a generator of its own, seeded from ``seed`` and the task, so the global RNG is
    drawn only by the learner's forward passes (dropout), as any training draws it.

    **Initial weights.** The backbone's weights as constructed and each head block's as grown
    for its task (``setup_task``) are kept, on the CPU, and saved in every checkpoint
    (``cl_state_dict``): a run resumed after task $t$ resets its learner to exactly the weights an
    uninterrupted run resets to (a resumed run grows the old blocks again from other random
    draws before loading them, so they could not be recomputed). A pretrained backbone is reset
    to its pretrained weights, as in the paper's pretraining experiments.

    **Differences from the paper's and Mammoth's training.** The official code trains each
    learner for 128 (MNIST) to 256 epochs with SGD (momentum 0.9, batch 16), a warm-up epoch at
    $0.1 \cdot$ the learning rate, then cosine annealing with warm restarts
    ($T_0 = 1$, $T_\text{mult} = 2$, 0.05 to 0.0005), gradient clipping at norm 10 and, for CIFAR,
    CutMix. Mammoth's ``models/gdumb.py`` keeps the warm-up, the warm restarts and CutMix, without
    clipping, fills its memory with the reservoir ``Buffer``, and trains the learner once, after
    the last task. Here the learner is trained after every task, since every
    task's test is a query; the optimizer and scheduler are the run's (Adam at 1e-3 by default;
    ``optimizer=sgd_momentum`` with a ``CosineAnnealingWarmRestarts`` scheduler is the paper's);
    there is no CutMix and no clipping (``memory_epochs`` is the budget to tune). A plateau
    scheduler is refused: the validation loss is measured once per task, after the learner's
    training, so it could never act during it. The learner trains in the parameters' precision
    without autocast: under a mixed-precision Trainer it trains in float32, which needs no loss
    scaling.

    Args:
        backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor: as ``CLAlgorithm``.
        memory_size: $k$, samples kept (200 here, ER's and DER's size; the paper: 200 to 9000).
        memory_epochs: passes of the learner over the memory after each task. 100 by default:
            with 200 samples and batch 32, 700 Adam steps; on Split Digits the memory's loss is
            below 1e-4 by 50 passes and the accuracy no longer changes from 100 to 200. The
            paper's 128 (MNIST) to 256 passes go with its SGD warm-restart schedule and CutMix.
        memory_batch_size: the learner's mini-batch size over the memory; ``None``: the
            benchmark's training batch size (the stream's).
        seed: seed of the memory's generator (the sampler's evictions) and of the learner's
            shuffling (``${seed}``); ``None``: the global seed (``torch.initial_seed()``), read
            without consuming the global RNG.
    """

    memory_policy = "balanced"

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        """The setting's rules, the memory's options, ``memory_epochs`` and the scheduler."""
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        epochs = options.get("memory_epochs", DEFAULT_MEMORY_EPOCHS)
        if not is_int(epochs) or epochs <= 0:
            problems.append(
                f"algorithm.memory_epochs={epochs!r}: must be an integer > 0 "
                f"(passes of the learner over the memory after each task; e.g. {DEFAULT_MEMORY_EPOCHS})"
            )
        if _is_plateau(options.get("lr_scheduler")):
            problems.append(
                "lr_scheduler=ReduceLROnPlateau cannot drive GDumb: its learner trains on the memory "
                "between two validations (the validation loss is measured once per task, after that "
                "training), so the plateau would never be seen. Use lr_scheduler=null, or a scheduler "
                "stepped by epoch (each memory epoch is one), e.g. CosineAnnealingLR with "
                "T_max=algorithm.memory_epochs"
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
        memory_epochs: int = DEFAULT_MEMORY_EPOCHS,
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
            options=dict(memory_epochs=memory_epochs, lr_scheduler=lr_scheduler),
        )
        self.memory_epochs = memory_epochs
        # The stream trains nothing; the learner's loop steps an optimizer of its own.
        self.automatic_optimization = False
        self._initial_state: dict[str, Tensor] = {}
        self._record_initial_state()
        self._learner_trained_for = -1  # the task whose memory the learner was last trained on
        self._stream_batch_size: int | None = None

    # ---- the learner's initial weights ----------------------------------------------------------
    def _learner_tensors(self) -> dict[str, Tensor]:
        """Every parameter and buffer of the backbone and heads (the learner), by name."""
        tensors = {}
        for prefix, module in (("backbone", self.backbone), ("heads", self.heads)):
            for name, tensor in (*module.named_parameters(), *module.named_buffers()):
                tensors[f"{prefix}.{name}"] = tensor
        return tensors

    def _record_initial_state(self) -> None:
        """Adds the learner's tensors not recorded yet (the backbone at construction, a head block
        when it is grown), as they are now: before any training touched them."""
        for name, tensor in self._learner_tensors().items():
            if name not in self._initial_state:
                self._initial_state[name] = tensor.detach().to("cpu", copy=True)

    @torch.no_grad()
    def reset_learner(self) -> None:
        """Sets the backbone and heads back to their initial weights (buffers included: batch-norm
        statistics start afresh too)."""
        for name, tensor in self._learner_tensors().items():
            initial = self._initial_state.get(name)
            if initial is None or initial.shape != tensor.shape:
                raise RuntimeError(
                    f"GDumb cannot reset {name}: its initial value was not recorded with this shape "
                    f"(recorded: {None if initial is None else tuple(initial.shape)}, "
                    f"now: {tuple(tensor.shape)}); "
                    f"a backbone that reshapes its tensors between tasks is not supported"
                )
            tensor.copy_(initial)

    def setup_task(self, task_id: int, num_classes: int) -> None:
        super().setup_task(task_id, num_classes)
        self._record_initial_state()  # the head block grown for this task, before it trains
        self._learner_trained_for = -1

    def cl_state_dict(self) -> dict:
        return {"initial_state": dict(self._initial_state)}

    def load_cl_state_dict(self, state: dict) -> None:
        self._initial_state = {name: tensor.cpu() for name, tensor in state["initial_state"].items()}

    def class_ids(self, labels: Tensor, task_ids: Tensor) -> Tensor:
        """What the sampler balances: ``global_class_ids`` in TIL and CIL; in DIL a (task, label)
        pair, ``task * C + label`` with the $C$ labels every DIL task shares (see the class docstring)."""
        if self.heads.paradigm == "dil":
            return task_ids * self.heads.classes_per_task[0] + labels
        return super().class_ids(labels, task_ids)

    # ---- the stream pass ---------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        trainer = self.trainer
        if trainer.world_size > 1:
            raise RuntimeError(
                "GDumb trains its learner on the memory in one process (each process would hold a "
                "memory of its own share of the stream): run it with trainer.devices=1"
            )
        # The sampler sees the stream once (online); the learner's passes are memory_epochs.
        trainer.fit_loop.max_epochs = 1

    def configure_optimizers(self):
        # Lightning's optimizer for this fit is never stepped (manual optimisation; the learner
        # builds its own, fresh, in ``train_on_memory``); built without the scheduler, which
        # ``train_on_memory`` steps itself.
        return self.optimizer_factory(params=self.trainable_parameters())

    def training_step(self, batch, batch_idx: int) -> Tensor | None:
        images, labels, task_id = batch  # uint8 images (``ReplayAlgorithm``)
        if batch_idx == 0:
            self._stream_batch_size = images.shape[0]
        self.remember(images, labels, task_id)
        if batch_idx + 1 != self.trainer.num_training_batches:
            return None
        # The stream's last batch: train the learner now, so that this epoch's validation sees it.
        loss = self.train_on_memory()
        if loss is not None:  # one value per task, written at the epoch's end
            self.log(
                task_metric("train/loss", self.task_id), loss, on_step=False, on_epoch=True, batch_size=1
            )
        return loss

    def on_train_end(self) -> None:
        # A fit that ended before its last stream batch (a limit, a stop) still ends with a learner
        # (Lightning allows no logging here).
        if self._learner_trained_for != self.task_id:
            self.train_on_memory()

    # ---- the learner -------------------------------------------------------------------------------
    def learner_batch_size(self) -> int:
        """``memory_batch_size``, else the benchmark's training batch size (the stream's)."""
        if self.memory_batch_size:
            return self.memory_batch_size
        benchmark = self._trainer.datamodule if self._trainer is not None else None
        size = getattr(benchmark, "batch_size", None) or self._stream_batch_size
        return int(size) if size else max(len(self.memory), 1)

    def learner_generator(self) -> torch.Generator:
        """The learner's shuffling generator for the current task: from the seed and the task only,
        so a resumed run draws the same orders and the global RNG is not touched."""
        return torch.Generator().manual_seed(self.memory.seed * 1_000_003 + 500_009 + self.task_id)

    def train_on_memory(self) -> Tensor | None:
        """Reset the learner to its initial weights and train it on the memory alone (Sec. 3).

        ``memory_epochs`` passes, each over the memory in a fresh random order, in mini-batches of
        ``learner_batch_size`` (a last batch of one sample joins the one before it: batch norm
        cannot train on a single sample). Returns the last pass's mean loss (``None`` for an empty
        memory: the learner stays at its initial weights). Raises ``NonFiniteLossError`` if a pass's
        loss is NaN or infinite (checked once per pass: one host synchronisation).
        """
        self.reset_learner()
        self._learner_trained_for = self.task_id
        size = len(self.memory)
        if size == 0:
            return None
        contents = self.memory.contents()
        device = contents["inputs"].device
        bounds = list(range(0, size, self.learner_batch_size())) + [size]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
            del bounds[-2]
        optimizer = self.optimizer_factory(params=self.trainable_parameters())
        scheduler = self.lr_scheduler_factory(optimizer=optimizer) if self.lr_scheduler_factory else None
        generator = self.learner_generator()
        precision = self._trainer.precision_plugin if self._trainer is not None else None
        epoch_loss = None
        # Autocast off: the loop has no loss scaler; the learner trains in its parameters' dtype.
        with torch.enable_grad(), torch.autocast(device.type, enabled=False):
            for epoch in range(self.memory_epochs):
                order = torch.randperm(size, generator=generator).to(device)
                total = torch.zeros((), device=device)
                for start, end in zip(bounds[:-1], bounds[1:], strict=True):
                    index = order[start:end]
                    task_ids = contents["task_ids"][index]
                    inputs = self.prepare_inputs(contents["inputs"][index], task_ids)
                    if precision is not None:
                        inputs = precision.convert_input(inputs)
                    logits, valid = replay_logits(self.heads, self.backbone(inputs), task_ids)
                    targets = replay_targets(self.heads, contents["labels"][index], task_ids)
                    loss = masked_cross_entropy(logits, valid, targets)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.detach().float() * (end - start)
                epoch_loss = total / size
                if not torch.isfinite(epoch_loss):
                    raise NonFiniteLossError(
                        f"task {self.task_id + 1}: GDumb's learner loss on the memory became NaN or infinite "
                        f"in memory epoch {epoch + 1} of {self.memory_epochs}. Usual causes: a learning rate "
                        f"too high for this model (optimizer.lr). Results and checkpoints of the earlier "
                        f"tasks are intact."
                    )
                if scheduler is not None:
                    scheduler.step()
        return epoch_loss

    # ---- what the task loop records ----------------------------------------------------------------
    def on_task_end(self, task_id: int) -> dict[str, float]:
        """The memory's footprint and fill, and how balanced it is: classes held and the fewest and
        most samples of one class."""
        record = super().on_task_end(task_id)
        if len(self.memory) > 0:
            counts = torch.bincount(self.memory.contents()["class_ids"].cpu())
            counts = counts[counts > 0]
            record |= {
                "memory_classes": float(len(counts)),
                "memory_min_per_class": float(counts.min()),
                "memory_max_per_class": float(counts.max()),
            }
        return record
