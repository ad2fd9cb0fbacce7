r"""A-GEM: Averaged Gradient Episodic Memory (Chaudhry et al., ICLR 2019, "Efficient Lifelong
Learning with A-GEM"), with a reservoir memory, for TIL, CIL and DIL."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clcore.algorithms.replay import ReplayAlgorithm, batch_task_ids
from clcore.components.replay_memory import masked_cross_entropy, replay_logits, replay_targets
from clcore.metrics.names import task_metric


def project_gradient(g: Tensor, g_ref: Tensor) -> Tensor:
    r"""A-GEM's update direction (Chaudhry et al. 2019, Eq. 11), for flat gradients ``[P]``:

    $$\tilde g = \begin{cases} g - \dfrac{g^\top g_{ref}}{g_{ref}^\top g_{ref}}\, g_{ref}
    & \text{if } g^\top g_{ref} < 0 \\ g & \text{otherwise,} \end{cases}$$

    the projection of $g$ onto the half-space $\{\tilde g : \tilde g^\top g_{ref} \ge 0\}$ (Eq. 10),
    so that, to first order, the step does not increase the loss on the memory batch.

    The case is chosen on the device (``torch.where``, no host synchronisation); where
    $g^\top g_{ref} \ge 0$ the result is ``g`` itself, bit for bit. The projection is linear in $g$
    and unchanged when $g_{ref}$ is scaled by any $c > 0$, so neither needs normalising (a mean
    or a sum over samples, a loss scaler's factor).
    """
    dot = torch.dot(g, g_ref)
    # where dot >= 0 the quotient is discarded (and may be 0/0 for g_ref = 0: never used)
    projected = g - (dot / torch.dot(g_ref, g_ref)) * g_ref
    return torch.where(dot < 0, projected, g)


class AGEM(ReplayAlgorithm):
    r"""A-GEM (Chaudhry et al., ICLR 2019, Sec. 4, Eq. 10-11) with a reservoir memory.

    Every step of task $t$ computes the gradient $g$ of the loss on the current batch $B_n$ and,
    once the memory $M$ holds samples, the reference gradient $g_{ref}$ of the loss on a batch
    $B_M$ drawn from it (each sample under its own task's head in TIL, the grown head with its
    global target in CIL: ``replay_logits``, ``replay_targets``). The update uses $\tilde g$ of
    Eq. 11 (``project_gradient``): $g$ where it does not conflict with $g_{ref}$, otherwise $g$
    minus its component along $g_{ref}$. Then $B_n$ is offered to the memory (reservoir).

    The memory: the paper keeps a per-task episodic memory of past tasks, filled at each task's
    end; here it is the reservoir shared by the replay methods, filled during training (Mammoth's
    ``agem_r``, the reservoir variant used by Buzzega et al. 2020, Table 2), so during the first
    task $g_{ref}$ comes from the first task's own earlier samples. Unlike ER, the memory's loss
    is never minimised directly: it only constrains the direction of the step.

    Optimisation stays automatic, so Lightning's gradient clipping (``trainer.gradient_clip_val``),
    gradient accumulation, precision plugins and the learning-rate scheduler work unchanged.
    ``training_step`` computes $g_{ref}$ on its own graph (``torch.autograd.grad``, which leaves
    ``.grad`` alone) and returns the current batch's loss, which Lightning backpropagates into
    ``.grad`` ($g$); ``on_before_optimizer_step``, which Lightning calls after the backward and
    before clipping and the step, replaces ``.grad`` with $\tilde g$. With
    ``accumulate_grad_batches = k`` the reference gradients of the $k$ memory batches are summed
    and the accumulated $g$ is projected once, against them. Under data parallelism $g$ arrives
    averaged over the processes and $g_{ref}$ is averaged likewise before the projection, so
    every process applies the same $\tilde g$. (In 16-bit mixed precision $g_{ref}$ is computed
    without the loss scaler; the projection does not depend on its scale.)

    Args:
        backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor: as ``CLAlgorithm``.
        memory_size: samples kept, $|M|$ (200 or 500 in Buzzega et al.'s tables).
        memory_batch_size: $|B_M|$; ``None``: the current batch's size (the paper draws a
            memory batch of the training batch's size, 10 in its experiments).
        seed: seed of the memory's generator (``${seed}`` in the config); ``None``: the global
            seed (``torch.initial_seed()``), read without consuming the global RNG.
    """

    # The optimizer's parameters in its order, $\theta$ (set at each fit's start); the summed flat
    # reference gradient of the batches since the last optimizer step; which parameters it reached
    # (the others keep a ``None`` gradient where $g$ has none). Class defaults: the constructor is
    # ``ReplayAlgorithm``'s, whose signature the pre-flight check reads.
    _agem_parameters: tuple[nn.Parameter, ...] = ()
    _reference_gradient: Tensor | None = None
    _reference_reached: tuple[bool, ...] = ()

    def on_train_start(self) -> None:
        # A fresh optimizer per task (``CLAlgorithm``): its parameters, in its order, are $\theta$.
        self._agem_parameters = tuple(
            p
            for optimizer in self.trainer.optimizers
            for group in optimizer.param_groups
            for p in group["params"]
        )
        self._reference_gradient, self._reference_reached = None, ()

    def on_train_end(self) -> None:
        self._reference_gradient, self._reference_reached = None, ()

    def reference_gradient(
        self, inputs: Tensor, labels: Tensor, task_ids: Tensor
    ) -> tuple[Tensor, tuple[bool, ...]]:
        r"""$g_{ref}$: the gradient of the memory batch's mean CE, flat over ``_agem_parameters``.

        Returns the flat gradient and, per parameter, whether the loss reached it (``False``: its
        slice is zero, e.g. a TIL head of a task absent from the batch).
        """
        logits, valid = replay_logits(self.heads, self.backbone(inputs), task_ids)
        loss = masked_cross_entropy(logits, valid, replay_targets(self.heads, labels, task_ids))
        parameters = self._agem_parameters
        grads = torch.autograd.grad(loss, parameters, allow_unused=True)
        flat = torch.cat(
            [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(parameters, grads)]
        )
        return flat, tuple(g is not None for g in grads)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, labels, task_id = batch  # uint8 images (``ReplayAlgorithm``)
        task_ids = batch_task_ids(task_id, images.shape[0], images.device)
        size = images.shape[0]
        if len(self.memory) > 0:
            replay = self.memory.sample(self.memory_batch_size_for(size))
            # one preparation for both batches, each sample with its own task's transform
            inputs = self.prepare_inputs(
                torch.cat([images, replay["inputs"]]), torch.cat([task_ids, replay["task_ids"]])
            )
            x = inputs[:size]
            # Separate forward passes: $g_{ref}$ must not depend on the current batch (batch norm)
            reference, reached = self.reference_gradient(inputs[size:], replay["labels"], replay["task_ids"])
            if self._reference_gradient is None:
                self._reference_gradient, self._reference_reached = reference, reached
            else:  # accumulated batches: one projection against the sum
                self._reference_gradient = self._reference_gradient + reference
                self._reference_reached = tuple(a or b for a, b in zip(self._reference_reached, reached))
        else:
            x = self.prepare_inputs(images, task_ids)
        loss = self.loss(self(x, task_id), self.heads.targets(labels, task_id))
        self.remember(images, labels, task_id)
        if self.is_logging_step(batch_idx):
            self.log(task_metric("train/loss", task_id), loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    @torch.no_grad()
    def on_before_optimizer_step(self, optimizer) -> None:
        """Replace $g$ (the parameters' ``.grad``) with $\\tilde g$ of Eq. 11 before the step."""
        reference, reached = self._reference_gradient, self._reference_reached
        self._reference_gradient, self._reference_reached = None, ()
        if reference is None:  # the memory was empty: the step uses g as it is
            return
        trainer = self._trainer
        if trainer is not None:  # data parallelism: the same g_ref on every process (g is averaged)
            reference = trainer.strategy.reduce(reference, reduce_op="mean")
        parameters = self._agem_parameters
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
        projected = project_gradient(torch.cat([g.reshape(-1) for g in grads]), reference)
        for p, g, new, by_reference in zip(
            parameters, grads, projected.split([g.numel() for g in grads]), reached
        ):
            if p.grad is not None:
                p.grad.copy_(new.view_as(g))
            elif by_reference:  # $g$ is zero here, $\tilde g$ may not be (-c g_ref)
                p.grad = new.view_as(g).clone()
