"""Per-weight masks over a plain backbone: the shared block of PackNet and WSN.

Parameter-isolation methods that give each task its own subset of a shared network's weights
(PackNet, Mallya & Lazebnik 2018; WSN, Kang et al. 2022) need the same machinery, whatever rule
picks the subset:

- which weights are masked: the weight matrix of every ``nn.Linear`` and the kernel of every
  ``nn.Conv1d/2d/3d`` of the backbone (``maskable_weights``), so ``backbone=mlp`` and
  ``backbone=resnet18`` work as they are, with no mask layers of their own;
- a forward pass with replaced weights: ``torch.func.functional_call`` runs the backbone with
  ``{name: effective weight}``, each a tensor op on the whole weight per batch;
- exactly the ``k`` largest entries of a tensor, among the eligible ones (``top_k_mask``): PackNet
  keeps the largest magnitudes, WSN the largest scores;
- freezing what earlier tasks use, bit for bit. During a task every masked weight is split into
  *trainable* entries, *frozen* entries (used, value fixed) and *unused* entries (0). The training
  forward uses ``where(trainable, W, base)`` with ``base`` the frozen entries' values, fixed for
  the task, so no gradient reaches a frozen entry; after every optimiser step the same ``where``
  writes ``base`` back into ``W``, so that no optimiser rule (weight decay, AdamW's decoupled decay,
  momentum left from an earlier phase) can move a frozen entry either;
- the rest of the backbone (biases, normalisation layers) trains on the first task only and is
  fixed afterwards: PackNet's reference code keeps biases and batch norm fixed after the first
  task (``train_biases``/``train_bn`` off), and WSN's networks have no biases and no learnt norm
  parameters. From task 2 on they enter the forward pass detached, stay out of the optimiser, and
  norm layers with running statistics run in eval mode (their statistics stay those of task 1).

With a fresh head per task (TIL) this makes an earlier task's test-time network a function of
tensors that later tasks never change, so its test outputs stay bit-identical (BWT exactly 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from clcore.algorithms.base import CLAlgorithm
from clcore.backbones.hat_mask import HATMaskBackbone
from clcore.metrics.names import task_metric

Tensors = dict[str, Tensor]

# Layers whose weight is masked: the fully connected and convolutional ones.
MASKED_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Norm layers that keep running statistics (batch norm, instance norm with tracking)
_NORMS_WITH_STATISTICS = nn.modules.batchnorm._NormBase


def maskable_weights(module: nn.Module) -> dict[str, nn.Parameter]:
    """The weight of every ``Linear`` and ``Conv`` layer of ``module``, by parameter name.

    E.g. ``{"layers.1.weight": ..., "layers.3.weight": ...}`` for ``MLP``; for ``ResNet18`` every
    convolution kernel, the 1x1 shortcut convolutions included. Biases are not masked.
    """
    return {
        f"{name}.weight" if name else "weight": layer.weight
        for name, layer in module.named_modules()
        if isinstance(layer, MASKED_LAYER_TYPES)
    }


def storage_key(name: str) -> str:
    """A parameter name as a buffer or ``ParameterDict`` key (they may not contain dots)."""
    return name.replace(".", "__")


def rounded_count(fraction: float, n: int) -> int:
    """``fraction * n`` rounded half up, within ``[0, n]``: a per-layer count of weights."""
    return min(n, max(0, math.floor(fraction * n + 0.5)))


def top_k_mask(values: Tensor, k: int, eligible: Tensor | None = None) -> Tensor:
    """Boolean mask of exactly the ``k`` largest entries of ``values`` among the ``eligible`` ones.

    ``eligible``: a boolean tensor of ``values``' shape (default: every entry); ``k`` must not
    exceed the number of eligible entries. One ``topk`` on the flattened tensor, no Python loop
    over entries; ties at the threshold are broken by ``torch.topk`` (deterministic).
    """
    flat = values.detach().flatten()
    if eligible is not None:
        flat = flat.masked_fill(~eligible.flatten(), float("-inf"))
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    if k > 0:
        mask[flat.topk(k, sorted=False).indices] = True
    return mask.view(values.shape)


def used_fraction(masks: Mapping[str, Tensor]) -> float:
    """Fraction of all masked weights set in ``masks`` (``{name: bool tensor}``)."""
    used = sum(int(mask.sum()) for mask in masks.values())
    total = sum(mask.numel() for mask in masks.values())
    return used / total if total else 0.0


class MaskStore(nn.Module):
    """One buffer per masked weight, by parameter name, so that it is in ``state_dict()``.

    PackNet's ownership and WSN's per-task masks live here: they are saved in every per-task
    checkpoint and a resumed run continues with them.
    """

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        super().__init__()
        self.names = tuple(tensors)
        for name, tensor in tensors.items():
            self.register_buffer(storage_key(name), tensor)

    def __getitem__(self, name: str) -> Tensor:
        return getattr(self, storage_key(name))

    def items(self):
        return ((name, self[name]) for name in self.names)


class WeightMaskAlgorithm(CLAlgorithm):
    """The ``CLAlgorithm`` side of per-weight masks on a plain backbone (TIL).

    A subclass states its rule in three places:

    - ``test_weights(task_id)``: the effective masked weights of a task at test time;
    - ``training_weights()``: those of the current training step (they may carry a gradient to
      something else, WSN's scores), built from ``split_weights()``;
    - when the split of the weights into trainable / frozen / unused changes:
      ``set_weight_split(trainable, used)``, at the task's start and whenever its rule changes it
      (PackNet's pruning).

    The block runs the backbone with those weights (``backbone_forward``), trains the backbone's
    other parameters on the first task only, and keeps frozen weights bit-identical.
    """

    supported_paradigms = ("til",)

    @classmethod
    def config_problems(cls, options, *, paradigm=None, backbone_type=None) -> list[str]:
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        if backbone_type is not None and issubclass(backbone_type, HATMaskBackbone):
            problems.append(
                f"algorithm {cls.__name__} masks the weights of a plain backbone; {backbone_type.__name__} "
                f"has HAT's unit masks and needs the task id in its forward pass: use backbone=mlp or backbone=resnet18"
            )
        return problems

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        weights = maskable_weights(self.backbone)
        if not weights:
            raise ValueError(
                f"{type(self).__name__} masks Linear and Conv weights, but the backbone "
                f"{type(self.backbone).__name__} has none"
            )
        self.masked_names: tuple[str, ...] = tuple(weights)
        masked = {id(p) for p in weights.values()}
        # Everything else of the backbone: biases, norm layers (trained on task 1 only)
        self.unmasked_names: tuple[str, ...] = tuple(
            name for name, p in self.backbone.named_parameters() if id(p) not in masked
        )
        # The current task's split (set_weight_split); per task, recomputed at each train start
        self._trainable: Tensors = {}
        self._base: Tensors = {}

    # ---- the weights -------------------------------------------------------------------------
    def masked_weight(self, name: str) -> nn.Parameter:
        return self.backbone.get_parameter(name)

    def masked_weights(self) -> dict[str, nn.Parameter]:
        return {name: self.masked_weight(name) for name in self.masked_names}

    @property
    def shared_frozen(self) -> bool:
        """Biases and norm layers train on the first task only (module docstring)."""
        return self.task_id > 0

    @torch.no_grad()
    def set_weight_split(self, trainable: Mapping[str, Tensor], used: Mapping[str, Tensor]) -> None:
        """Per masked weight: ``trainable`` entries train; ``used`` but not trainable ones are frozen
        at their current value; the others are 0 (in the forward pass and, after every step, in
        the weight itself)."""
        self._trainable = {name: trainable[name] for name in self.masked_names}
        self._base = {}
        for name in self.masked_names:
            weight = self.masked_weight(name)
            frozen = used[name] & ~trainable[name]
            self._base[name] = torch.where(frozen, weight.detach(), 0.0)

    def split_weights(self) -> Tensors:
        """``where(trainable, W, base)`` per masked weight: the gradient reaches trainable entries only."""
        if not self._trainable:
            raise RuntimeError(f"{type(self).__name__}: the weight split is set at the start of training")
        return {
            name: torch.where(self._trainable[name], self.masked_weight(name), self._base[name])
            for name in self.masked_names
        }

    @torch.no_grad()
    def restore_frozen_weights(self) -> None:
        """Write the frozen entries' values (and the unused entries' zeros) back into the weights."""
        for name in self.masked_names:
            weight = self.masked_weight(name)
            weight.copy_(torch.where(self._trainable[name], weight, self._base[name]))

    def used_by_task(self, task_id: int) -> Tensors:  # pragma: no cover - abstract
        """Per masked weight, a bool mask of the entries task ``task_id``'s test network uses
        (what ``WeightMaskPlots`` draws)."""
        raise NotImplementedError

    def test_weights(self, task_id: int) -> Tensors:  # pragma: no cover - abstract
        raise NotImplementedError

    def training_weights(self) -> Tensors:
        return self.split_weights()

    # ---- forward -----------------------------------------------------------------------------
    def backbone_forward(self, x: Tensor, weights: Mapping[str, Tensor]) -> Tensor:
        """The backbone with its masked weights replaced by ``weights`` (``functional_call``).

        After the first task the other backbone parameters enter detached: they are fixed, and no
        gradient is computed for them.
        """
        parameters = dict(weights)
        if self.shared_frozen:
            for name in self.unmasked_names:
                parameters[name] = self.backbone.get_parameter(name).detach()
        return functional_call(self.backbone, parameters, (x,))

    def forward(self, x: Tensor, task_id: int) -> Tensor:
        """Logits of task ``task_id`` through its test-time weights (the same rule in validation)."""
        task_id = int(task_id)
        return self.heads(self.backbone_forward(x, self.test_weights(task_id)), task_id)

    # ---- training ----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, labels, task_id = batch
        task_id = int(task_id)
        if task_id != self.task_id:
            raise ValueError(
                f"{type(self).__name__} is set up for task {self.task_id + 1} but got a training batch of task {task_id + 1}"
            )
        logits = self.heads(self.backbone_forward(x, self.training_weights()), task_id)
        loss = self.loss(logits, self.heads.targets(labels, task_id))
        if self.is_logging_step(batch_idx):
            self.log(task_metric("train/loss", task_id), loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        # Frozen entries get no gradient; writing them back after the step also undoes what an
        # optimiser does without one (weight decay), so they stay bit-identical for any optimiser.
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.restore_frozen_weights()

    def _norms_with_statistics(self) -> list[nn.Module]:
        return [m for m in self.backbone.modules() if isinstance(m, _NORMS_WITH_STATISTICS)]

    def on_train_epoch_start(self) -> None:
        # After task 1 the norm layers are fixed: eval mode keeps their running statistics (and
        # uses them instead of batch statistics), as PackNet's reference trains without batch norm.
        # Validation restores the modes it found, so setting them once per epoch is enough.
        if self.shared_frozen:
            for norm in self._norms_with_statistics():
                norm.eval()

    def on_fit_end(self) -> None:
        # Lightning keeps module modes across fit and test; hand the next task a module in train mode.
        for norm in self._norms_with_statistics():
            norm.train(self.training)

    def extra_trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the method itself that train in every task (WSN's scores)."""
        return []

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The masked weights, the method's own parameters, the current task's head; the other backbone
        parameters on the first task only. Earlier heads never enter the optimiser."""
        parameters = list(self.masked_weights().values()) + self.extra_trainable_parameters()
        if not self.shared_frozen:
            parameters += [self.backbone.get_parameter(name) for name in self.unmasked_names]
        parameters += list(self.heads.heads[self.task_id].parameters())
        return [p for p in parameters if p.requires_grad]
