"""``CLAlgorithm``: the LightningModule every continual-learning algorithm extends."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn

from clcore.backbones.base import CLBackbone
from clcore.config_rules import raise_if_problems
from clcore.heads.base import CLHeads
from clcore.lightning_speed import per_step_attributes
from clcore.loggers.sequence_step import is_logged_step
from clcore.metrics.names import task_metric
from clcore.metrics.task_accuracy import TaskAccuracy

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite: the task stops; earlier checkpoints stay as they were."""


class CLAlgorithm(LightningModule):
    """Backbone + heads + criterion, trained one task at a time by ``clcore.clrun.task_loop``.

    The task loop calls ``setup_task(t, num_classes)`` before each task, then ``Trainer.fit`` and
    ``Trainer.test`` on every seen task. Batches are ``(x, local_labels, task_id)``; the heads map
    local labels to targets for the paradigm. A subclass overrides what differs (a loss term,
    a per-task hook, manual optimisation) and lists the paradigms it supports, checked here,
    before any training.

    Args:
        backbone: the shared feature extractor.
        heads: ``HeadsTIL`` / ``HeadsCIL`` / ``HeadDIL``.
        optimizer: a factory ``optimizer(params=...)`` (Hydra ``_partial_: true``); a fresh
            optimizer is built for every task, as in the papers (HAT Sec. 3; GEM Sec. 5).
        lr_scheduler: optional factory ``lr_scheduler(optimizer=...)``.
        options: the subclass's own keyword arguments, checked with the setting by
            ``config_problems`` (every problem at once, as the pre-flight check reports them).
        num_tasks: length of the task sequence (sizes the per-task accuracy state).
        log_every_n_steps: how often the training loss reaches the loggers; logging every step
            costs a host-device synchronisation, so it is sparse by default.
    """

    supported_paradigms: tuple[str, ...] = ("til", "cil", "dil")
    # Why the others are not supported, in the words of the paper (shown with the refusal).
    paradigm_reason: str = ""
    # The backbone class this algorithm needs (e.g. HAT: a mask backbone); checked by
    # ``clcore.clrun.checks`` from the config, before anything is built, and again here.
    required_backbone_type: type | None = None
    # Metrics logged under the same name in every task (``validation_step``), so that a plateau
    # scheduler or an early-stopping / checkpoint callback can monitor them; the pre-flight check
    # refuses a monitor not listed here. A subclass that logs more extends the tuple.
    MONITORABLE_METRICS: tuple[str, ...] = ("val/loss", "val/acc")
    # The training loss reaches the loggers at least this many times per epoch (``is_logging_step``).
    min_logged_steps_per_epoch: int = 4
    # The loss is checked for NaN/inf on the device every step, but read on the host (a
    # synchronisation) only every this many training batches and at each epoch's last batch.
    nonfinite_check_every_n_steps: int = 50
    # clcore's own attributes assigned every step; with Lightning's per-step ones
    # (``clcore.lightning_speed``) ``__setattr__`` stores them directly (see there).
    _PLAIN_ATTRIBUTES = (
        frozenset({"_loss_sum_since_check", "_train_batches_this_task", "_train_batches_checked"})
        | per_step_attributes()
    )

    def __setattr__(self, name: str, value) -> None:
        """Plain per-step attributes skip ``nn.Module.__setattr__``'s registry checks.

        Lightning assigns ``_current_fx_name`` before and after every hook it calls, about 40
        times per training step; ``nn.Module.__setattr__`` first tests each value against the
        parameter, submodule and buffer registries. For the names in ``_PLAIN_ATTRIBUTES`` it
        would end in ``object.__setattr__`` anyway, so this stores them there directly.
        """
        if name in self._PLAIN_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def __init__(
        self,
        backbone: CLBackbone,
        heads: CLHeads,
        optimizer: OptimizerFactory,
        num_tasks: int,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_monitor: str = "val/loss",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        raise_if_problems(
            self.config_problems(options or {}, paradigm=heads.paradigm, backbone_type=type(backbone))
        )
        if heads.input_dim != backbone.output_dim:
            raise ValueError(
                f"heads take {heads.input_dim}-d features but the backbone outputs {backbone.output_dim}"
            )
        self.backbone = backbone
        self.heads = heads
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lr_scheduler_monitor = lr_scheduler_monitor
        self.num_tasks = num_tasks
        self.task_id = 0
        self.test_accuracy = TaskAccuracy(num_tasks)
        self.last_test_accuracy: Tensor | None = None
        # Sum of the losses since the last non-finite check, on the loss's device (no sync to update)
        self._loss_sum_since_check: Tensor | None = None
        self._train_batches_this_task = 0
        self._train_batches_checked = 0

    # ---- the rules: one place, read by the constructor and by clrun's pre-flight check ---------
    @classmethod
    def config_problems(
        cls,
        options: Mapping[str, Any],
        *,
        paradigm: str | None = None,
        backbone_type: type | None = None,
    ) -> list[str]:
        """Every problem with this algorithm in this setting, each with its fix (``clcore.config_rules``).

        ``options`` are the algorithm's own keyword arguments as plain data (the config's
        ``algorithm.*`` keys, or what a subclass's constructor received; a key may be absent
        and then takes its default), plus ``num_tasks`` and ``lr_scheduler``, which the task loop
        gives every constructor; ``paradigm`` and ``backbone_type`` are the heads' paradigm
        and the backbone class, where known. A subclass with options of its own extends this
        and returns ``super().config_problems(...)`` plus its own problems; the constructor
        raises them all at once, and the pre-flight check reports them before anything is built.
        """
        problems = []
        if paradigm is not None and paradigm not in cls.supported_paradigms:
            problems.append(
                f"algorithm {cls.__name__} does not support paradigm={paradigm}: it supports "
                f"{', '.join(cls.supported_paradigms)}{' (' + cls.paradigm_reason + ')' if cls.paradigm_reason else ''}. "
                f"Use paradigm={cls.supported_paradigms[0]} or another algorithm"
            )
        required = cls.required_backbone_type
        if required is not None and backbone_type is not None and not issubclass(backbone_type, required):
            problems.append(
                f"algorithm {cls.__name__} needs a backbone that is a {required.__name__}, but the backbone "
                f"is a {backbone_type.__name__}: choose a backbone config whose _target_ is a {required.__name__} subclass"
            )
        return problems

    @classmethod
    def benchmark_problems(cls, options: Mapping[str, Any], benchmark) -> list[str]:
        """Problems only the loaded benchmark shows (e.g. a replay memory larger than the data);
        read by ``clrun``'s pre-flight check once the data is loaded. ``options`` as above."""
        return []

    @property
    def paradigm(self) -> str:
        return self.heads.paradigm

    # ---- the per-task protocol -------------------------------------------------------------
    def setup_task(self, task_id: int, num_classes: int) -> None:
        """Prepare for task ``task_id`` (0-based): grow the heads, reset per-task state."""
        self.task_id = task_id
        self.backbone.setup_task(task_id)
        self.heads.setup_task(task_id, num_classes)
        self._loss_sum_since_check = None
        self._train_batches_this_task = self._train_batches_checked = 0

    def on_task_end(self, task_id: int) -> dict[str, float]:
        """Called by the task loop after task ``task_id`` trained. Returns scalars to record."""
        return {}

    def current_task_train_batches(self) -> Iterator[tuple[Tensor, Tensor, int]]:
        """The current task's training batches as ``training_step`` receives them; only inside ``fit``.

        For an algorithm that estimates something from the task's data at the end of its training
        (``on_train_end``: EWC's Fisher, MAS's importance). The batches come from the loader ``fit``
        trains on, on this module's device, through the same transfer hooks Lightning applies (the
        datamodule's where it overrides them, as Lightning chooses): a benchmark's normalisation,
        its task transform and model input. (clcore's benchmark loaders draw their order from their
        own seeded generator, so reading them again does not touch the global RNG.)
        """
        trainer = self.trainer
        loader = trainer.train_dataloader
        if loader is None:
            raise RuntimeError(
                f"{type(self).__name__} reads the task's training batches only inside Trainer.fit"
            )
        datamodule = trainer.datamodule

        def hook(name: str):
            overridden = datamodule is not None and is_overridden(name, datamodule)
            return getattr(datamodule if overridden else self, name)

        before, transfer, after = (
            hook(name)
            for name in ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
        )
        for batch in loader:
            yield after(transfer(before(batch, 0), self.device, 0), 0)

    # ---- checkpointed state beyond parameters and buffers -----------------------------------
    def cl_state_dict(self) -> dict:
        """Algorithm state outside ``state_dict()``, saved in every per-task checkpoint.

        Parameters and buffers (HAT's masks) and module extra state (heads) are saved already;
        an algorithm that keeps other state across tasks in plain attributes (e.g. a list of
        task vectors) returns it here, or a resumed run would lose it. Tensors, numbers,
        strings, lists and dicts only: checkpoints load with ``weights_only=True``.
        """
        return {}

    def load_cl_state_dict(self, state: dict) -> None:
        """Inverse of ``cl_state_dict``; called when a run resumes from a checkpoint."""
        if state:
            raise NotImplementedError(
                f"{type(self).__name__} saved {sorted(state)} in cl_state_dict but does not override load_cl_state_dict"
            )

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, x: Tensor, task_id: int) -> Tensor:
        return self.heads(self.backbone(x), task_id)

    def eval_logits(self, x: Tensor, task_id: int) -> Tensor:
        """Logits used for validation and test; algorithms with a test-time rule override this."""
        return self(x, task_id)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets)

    # ---- Lightning steps ---------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, labels, task_id = batch
        loss = self.loss(self(x, task_id), self.heads.targets(labels, task_id))
        if self.is_logging_step(batch_idx):
            self.log(task_metric("train/loss", task_id), loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def is_logging_step(self, batch_idx: int) -> bool:
        """Log training scalars only on the steps the loggers write (``trainer.log_every_n_steps``).

        ``self.log`` costs about a millisecond of Lightning bookkeeping per call, more than a
        small model's step; values logged between writes would be dropped anyway.
        """
        trainer = self._trainer
        if trainer is None:
            return True
        if batch_idx == 0:
            self._log_at_least_a_few_times_per_epoch(trainer)
        return is_logged_step(trainer, batch_idx)

    def _log_at_least_a_few_times_per_epoch(self, trainer) -> None:
        """Shortens the Trainer's logging stride for a task whose epoch is shorter than it: with
        ``log_every_n_steps=50`` and a new Trainer per task, a task of 12 batches would log no
        training loss at all, and a stride close to the epoch's length aliases what changes within
        an epoch (HAT's annealed s). At least ``min_logged_steps_per_epoch`` points per epoch, a
        few milliseconds of logging per epoch."""
        batches, every = trainer.num_training_batches, trainer.log_every_n_steps
        if every and isinstance(batches, int) and batches > 0:
            stride = max(1, batches // self.min_logged_steps_per_epoch)
            trainer.log_every_n_steps = min(every, stride)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Stops the task if the loss went non-finite: a diverged model only produces garbage.

        Runs for automatic and manual optimisation alike (``outputs`` holds the returned loss).
        The losses are summed on their device (one op a step, no host synchronisation): a NaN or
        inf in any of them makes the sum non-finite. The sum is read every
        ``nonfinite_check_every_n_steps`` batches and at each epoch's end. Half-precision losses
        are summed in float32, so only a loss beyond ~1e36 (a diverged run) could overflow it.
        A subclass that overrides this hook must call ``super()``.
        """
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, Tensor):
            loss = loss.detach()
            if loss.dtype in (torch.float16, torch.bfloat16):
                loss = loss.float()
            running = self._loss_sum_since_check
            self._loss_sum_since_check = loss if running is None else running + loss
        self._train_batches_this_task += 1
        epoch_end = batch_idx + 1 == self.trainer.num_training_batches
        if epoch_end or self._train_batches_this_task % self.nonfinite_check_every_n_steps == 0:
            self.raise_if_loss_was_nonfinite()

    def raise_if_loss_was_nonfinite(self) -> None:
        """Raise ``NonFiniteLossError`` if a loss since the last check was NaN/inf (one host sync)."""
        running, self._loss_sum_since_check = self._loss_sum_since_check, None
        first, last = self._train_batches_checked + 1, self._train_batches_this_task
        self._train_batches_checked = last
        nonfinite = running is not None and not bool(torch.isfinite(running).all())
        if self._trainer is not None:  # every process stops together under data parallelism
            nonfinite = self.trainer.strategy.reduce_boolean_decision(nonfinite, all=False)
        if nonfinite:
            raise NonFiniteLossError(
                f"task {self.task_id + 1}: the training loss became NaN or infinite in training batches "
                f"{first}..{last} of this task, so the task was stopped. Usual causes: a learning rate too "
                f"high for this model (optimizer.lr), an unstable loss term, or bad inputs. Results and "
                f"checkpoints of the earlier tasks are intact."
            )

    def validation_step(self, batch, batch_idx: int) -> None:
        x, labels, task_id = batch
        logits = self.eval_logits(x, task_id)
        targets = self.heads.targets(labels, task_id)
        batch_size = labels.shape[0]
        loss = self.loss(logits, targets)
        accuracy = (logits.argmax(-1) == targets).float().mean()
        # Loggers get one curve per task (``val/loss/task_3``), like the training loss. The plain
        # ``val/loss`` / ``val/acc`` stay out of the loggers but in ``callback_metrics``, under one
        # name for every task, for ``lr_scheduler_monitor``, early stopping and the progress bar.
        self.log(task_metric("val/loss", task_id), loss, batch_size=batch_size, sync_dist=True)
        self.log(task_metric("val/acc", task_id), accuracy, batch_size=batch_size, sync_dist=True)
        self.log("val/loss", loss, batch_size=batch_size, sync_dist=True, logger=False)
        self.log("val/acc", accuracy, batch_size=batch_size, sync_dist=True, prog_bar=True, logger=False)

    def on_test_epoch_start(self) -> None:
        self.test_accuracy.reset()

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, labels, task_id = batch
        preds = self.eval_logits(x, task_id).argmax(-1)
        self.test_accuracy.update(preds, self.heads.targets(labels, task_id), task_id)

    def on_test_epoch_end(self) -> None:
        # compute() synchronises across processes: every rank gets the full per-task accuracy.
        # reshape: torchmetrics squeezes a one-element result (a one-task run) to a scalar
        # The loggers get these from the task loop, once per task, as ``task_<j>/test/acc`` at
        # step = tasks done (a curve per task across the sequence), not through ``self.log``:
        # that would cost Lightning's per-call bookkeeping for every seen task after every task,
        # and would also log the zero-shot tests of the untrained model under the same names.
        self.last_test_accuracy = self.test_accuracy.compute().reshape(-1).cpu()

    # ---- optimisation ------------------------------------------------------------------------
    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.trainable_parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.lr_scheduler_monitor},
        }
