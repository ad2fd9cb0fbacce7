"""CBP: Continual Backpropagation (Dohare et al., "Loss of plasticity in deep continual learning", Nature 2024).

Plain training plus a generate-and-test step after every update: each hidden unit carries a
running *contribution utility* and an age; a small fraction of the mature units, the ones of
lowest utility, is reinitialised: incoming weights redrawn from the layer's initial distribution,
outgoing weights set to zero. It keeps the network plastic (able to learn new tasks); it does
nothing against forgetting.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from clcore.algorithms.base import CLAlgorithm, OptimizerFactory, SchedulerFactory
from clcore.backbones.base import CLBackbone
from clcore.backbones.mlp import MLP
from clcore.config_rules import ConfigError, is_int, is_number
from clcore.heads.base import CLHeads
from clcore.metrics.names import task_metric

# Element-wise activations that end a hidden layer (``Linear -> [BatchNorm1d] -> activation``).
ACTIVATIONS = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Mish,
)
# Modules that may sit between hidden layers without changing which unit is which.
_PASS_THROUGH = (nn.Dropout, nn.Flatten, nn.Identity)


# ---- the network's hidden units ------------------------------------------------------------------
@dataclass
class HiddenLayer:
    """One layer of hidden units: ``h = activation(norm(incoming(x)))``.

    Unit ``i``'s incoming weights are row ``i`` of ``incoming.weight`` and ``incoming.bias[i]``;
    its outgoing weights are column ``i`` of ``outgoing.weight``, or of the heads' layers when
    ``outgoing`` is None (the backbone's last layer: its units are the features the heads read).
    """

    incoming: nn.Linear
    norm: nn.BatchNorm1d | None
    activation: nn.Module
    outgoing: nn.Linear | None

    @property
    def width(self) -> int:
        return self.incoming.out_features


def hidden_layers(backbone: nn.Module) -> list[HiddenLayer]:
    """The hidden layers of a fully connected backbone, in forward order.

    Reads the backbone's leaf modules in registration order, which is the forward order of an
    ``nn.Sequential`` (``MLP.layers``): each ``Linear`` followed by an optional ``BatchNorm1d`` and an
    element-wise activation is a hidden layer; dropout, flatten and identity are skipped. The next
    layer's ``Linear`` takes its outgoing weights; the last layer's go to the heads (its activations
    are the features, as ``MLP`` applies the activation after every layer). Anything else
    (a convolution, a linear layer without an activation, a shared activation module) raises
    ``ConfigError``: CBP's unit bookkeeping would not know which weights belong to a unit.
    """
    layers: list[HiddenLayer] = []
    pending: list[Any] | None = None  # [linear, norm] waiting for its activation
    for name, module in backbone.named_modules():
        if list(module.children()):
            continue  # a container: its leaves follow
        where = f"{type(backbone).__name__}.{name}"
        if isinstance(module, nn.Linear):
            if pending is not None:
                raise ConfigError([f"CBP: {where} follows a Linear layer with no activation in between"])
            pending = [module, None]
        elif isinstance(module, nn.BatchNorm1d) and pending is not None and pending[1] is None:
            pending[1] = module
        elif isinstance(module, ACTIVATIONS) and pending is not None:
            layers.append(HiddenLayer(pending[0], pending[1], module, None))
            pending = None
        elif not isinstance(module, _PASS_THROUGH):
            raise ConfigError(
                [
                    f"CBP: {where} ({type(module).__name__}) is not part of a fully connected "
                    "Linear -> [BatchNorm1d] -> activation layer; CBP supports backbone=mlp"
                ]
            )
    if pending is not None:
        raise ConfigError([f"CBP: the last Linear layer of {type(backbone).__name__} has no activation"])
    if not layers:
        raise ConfigError([f"CBP: {type(backbone).__name__} has no hidden layer (Linear + activation)"])
    for layer, following in zip(layers[:-1], layers[1:]):
        if following.incoming.in_features != layer.width:
            raise ConfigError(
                [f"CBP: a {layer.width}-unit layer feeds a Linear of {following.incoming.in_features} inputs"]
            )
        layer.outgoing = following.incoming
    return layers


# ---- Eq. 1 and the replacement's parts ------------------------------------------------------------
def contribution_utility(
    utility: Tensor, mean_abs_activation: Tensor, outgoing_abs_sum: Tensor, decay_rate: float
) -> Tensor:
    """``u <- eta u + (1 - eta) |h| sum_k |w_k|`` (Methods, Eq. 1), in place; returns ``u``.

    ``mean_abs_activation``: ``|h_i|`` per unit, averaged over the batch (Eq. 1 is written for one
    example per update; a mini-batch update uses its mean). ``outgoing_abs_sum``: ``sum_k |w_ik|``
    over the unit's outgoing weights. This is the plain contribution of the Nature paper, not the
    mean-corrected / adaptation utility of its preprint (arXiv 2306.13812v1), and without bias
    correction: a running average that starts at 0.
    """
    contribution = mean_abs_activation.to(utility.dtype) * outgoing_abs_sum.to(utility.dtype)
    return utility.mul_(decay_rate).add_(contribution, alpha=1.0 - decay_rate)


def initial_incoming_weights(layer: nn.Linear, count: int) -> tuple[Tensor, Tensor | None]:
    """``count`` fresh rows of ``layer.weight`` and entries of its bias, drawn as ``nn.Linear`` draws them.

    ``nn.Linear.reset_parameters``: weight ``kaiming_uniform_(a=sqrt(5))``, i.e.
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, and bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``; the
    same calls in the same order, so that a seeded draw equals a fresh ``nn.Linear(fan_in, count)``.
    A reinitialised unit is a unit as the network started with (the paper's ``d_l``).
    """
    weight = torch.empty(count, layer.in_features, device=layer.weight.device, dtype=layer.weight.dtype)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if layer.bias is None:
        return weight, None
    bound = 1.0 / math.sqrt(layer.in_features) if layer.in_features > 0 else 0.0
    bias = torch.empty(count, device=layer.bias.device, dtype=layer.bias.dtype)
    nn.init.uniform_(bias, -bound, bound)
    return weight, bias


def reset_optimizer_state(
    optimizers: Iterable[torch.optim.Optimizer], parameter: Tensor, dim: int, index: Tensor
) -> None:
    """Zero the optimiser's per-element state of ``parameter`` at ``index`` along ``dim``, and its gradient.

    Every state tensor shaped like the parameter (Adam's ``exp_avg``, ``exp_avg_sq``,
    ``max_exp_avg_sq``; SGD's ``momentum_buffer``; RMSprop's ``square_avg``) is reset there, so a
    new weight does not move with the momentum of the one it replaced. Adam's ``step`` is one count
    per tensor in ``torch.optim``, shared with the weights that stay, so it is left as it is (the
    reference implementation's own Adam keeps a count per element). The gradient is zeroed too: with
    gradient accumulation it would otherwise carry the old unit's part into the next step.
    """
    for optimizer in optimizers:
        state = optimizer.state.get(parameter)
        for value in (state or {}).values():
            if isinstance(value, Tensor) and value.shape == parameter.shape:
                value.index_fill_(dim, index, 0)
    if parameter.grad is not None:
        parameter.grad.index_fill_(dim, index, 0)


# ---- the algorithm ---------------------------------------------------------------------------------
class CBP(CLAlgorithm):
    """Continual Backpropagation (Dohare et al., Nature 2024, Methods "Continual backpropagation",
    Eq. 1 and Algorithm 1), for TIL, CIL and DIL: plain training plus selective reinitialisation.

    After every training step, for each hidden layer ``l`` of the backbone:

    1. every unit's age grows by one (``a_l += 1``);
    2. its contribution utility is updated with the step's activations (Eq. 1, ``contribution_utility``):
       ``u_l[i] <- eta u_l[i] + (1 - eta) |h_l,i| sum_k |w_l,i,k|``, ``h`` the unit's output
       (after its activation; the batch mean of ``|h|``), ``w`` its outgoing weights after the step;
    3. ``c_l += rho * n_eligible``, ``n_eligible`` the number of mature units (age > ``m``);
    4. when ``c_l >= 1``: the ``floor(c_l)`` mature units of lowest utility are reinitialised and
       ``c_l`` drops by as many (Algorithm 1 takes one unit per step and layer; with ``rho * n_l < 1``,
       as in every setting of the paper, that is the same). Reinitialising unit ``r``: its incoming
       weights (and bias) are redrawn from the layer's initial distribution, its outgoing weights are
       set to 0, so the new unit does not change what the network computes; ``u_l[r] = 0``,
       ``a_l[r] = 0``; the optimiser's state (Adam's moments) of those weights is zeroed. With batch
       norm after the Linear layer, the unit's batch-norm entries return to their initial values too.

    The hidden layers are those of the fully connected backbone (``hidden_layers``). The outgoing
    weights of the backbone's last layer are the heads': for the utility, the head layers that
    produce the current task's logits (TIL: the task's head; CIL: the whole grown head; DIL: the
    shared head), as the paper's output layer; at a replacement the unit's column is zeroed in every
    head, the earlier tasks' TIL heads included, so that no head reads the new random unit.

    The units that are removed lose their contribution (the smallest); only the new units add
    nothing. Utilities, ages and ``c_l`` carry over from task to task; ``utility_<l>`` are buffers
    (in ``state_dict``), ages and ``c_l`` are kept on the host, where deciding whether a unit is due
    needs no device synchronisation, and saved by ``cl_state_dict``. ``on_task_end`` reports the
    units replaced during the task.

    Args:
        backbone: an ``MLP`` (convolutional and HAT backbones are refused by ``config_problems``).
        heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor: as ``CLAlgorithm``.
        replacement_rate: ``rho``, the fraction of mature units replaced per step and layer.
        decay_rate: ``eta`` of Eq. 1 (0.99 in every experiment of the paper).
        maturity_threshold: ``m``; a unit younger than ``m + 1`` steps is never replaced.
    """

    def __init__(
        self,
        backbone: CLBackbone,
        heads: CLHeads,
        optimizer: OptimizerFactory,
        num_tasks: int,
        lr_scheduler: SchedulerFactory | None = None,
        lr_scheduler_monitor: str = "val/loss",
        replacement_rate: float = 1e-4,
        decay_rate: float = 0.99,
        maturity_threshold: int = 100,
    ) -> None:
        options = dict(
            replacement_rate=replacement_rate, decay_rate=decay_rate, maturity_threshold=maturity_threshold
        )
        super().__init__(backbone, heads, optimizer, num_tasks, lr_scheduler, lr_scheduler_monitor, options)
        self.replacement_rate = float(replacement_rate)
        self.decay_rate = float(decay_rate)
        self.maturity_threshold = int(maturity_threshold)
        self.layers = hidden_layers(backbone)
        width = self.layers[-1].width
        if width != backbone.output_dim:
            raise ConfigError(
                [f"CBP: the backbone's last layer has {width} units, output_dim {backbone.output_dim}"]
            )
        for index, layer in enumerate(self.layers):
            self.register_buffer(f"utility_{index}", torch.zeros(layer.width))
        # Host-side state: decides each step whether a unit is due without reading the device.
        self.ages: list[Tensor] = [torch.zeros(layer.width, dtype=torch.long) for layer in self.layers]
        self.units_due: list[float] = [0.0] * len(self.layers)
        self.replaced_this_task: list[int] = [0] * len(self.layers)
        # Filled by the activation hooks during a training forward; lists, so that a step assigns
        # items and not module attributes (``CLAlgorithm.__setattr__``).
        self._activations: list[Tensor | None] = [None] * len(self.layers)
        self._hooks: list[RemovableHandle] = []
        self._output_layers: list[nn.Linear] = []

    @classmethod
    def config_problems(
        cls,
        options: Mapping[str, Any],
        *,
        paradigm: str | None = None,
        backbone_type: type | None = None,
    ) -> list[str]:
        """The setting's rules (``CLAlgorithm``), a fully connected backbone, and CBP's three options."""
        problems = super().config_problems(options, paradigm=paradigm, backbone_type=backbone_type)
        if backbone_type is not None and not issubclass(backbone_type, MLP):
            problems.append(
                f"algorithm CBP reinitialises the hidden units of a fully connected backbone (Linear layers "
                f"followed by an activation, their outgoing weights in the next Linear layer or the heads); "
                f"backbone {backbone_type.__name__} is not supported (convolutional channels, residual blocks "
                f"and HAT's masked layers are not implemented for CBP). Use backbone=mlp"
            )
        rate = options.get("replacement_rate", 1e-4)
        if not (is_number(rate) and 0 <= rate <= 1):
            problems.append(
                f"algorithm.replacement_rate={rate!r}: must be a number in [0, 1] "
                "(the fraction of mature units replaced per step; 0: no replacement, i.e. Finetuning)"
            )
        decay = options.get("decay_rate", 0.99)
        if not (is_number(decay) and 0 <= decay < 1):
            problems.append(f"algorithm.decay_rate={decay!r}: must be a number in [0, 1) (the paper: 0.99)")
        maturity = options.get("maturity_threshold", 100)
        if not (is_int(maturity) and maturity >= 0):
            problems.append(
                f"algorithm.maturity_threshold={maturity!r}: must be an integer >= 0 (steps a new unit is protected)"
            )
        return problems

    # ---- state -------------------------------------------------------------------------------
    def utility(self, layer: int) -> Tensor:
        """The contribution utilities ``u_l`` of hidden layer ``layer`` (0-based), a buffer."""
        return getattr(self, f"utility_{layer}")

    def setup_task(self, task_id: int, num_classes: int) -> None:
        super().setup_task(task_id, num_classes)
        self.replaced_this_task[:] = [0] * len(self.layers)

    def on_task_end(self, task_id: int) -> dict[str, float]:
        """Units reinitialised during the task, in all and per hidden layer (1-based)."""
        extras = {"units_replaced": float(sum(self.replaced_this_task))}
        for index, count in enumerate(self.replaced_this_task):
            extras[f"units_replaced_layer_{index + 1}"] = float(count)
        return extras

    def cl_state_dict(self) -> dict:
        # The utilities are buffers (in state_dict); ages and the replacement counters live on the host.
        return {"ages": [age.clone() for age in self.ages], "units_due": list(self.units_due)}

    def load_cl_state_dict(self, state: dict) -> None:
        ages, due = state["ages"], state["units_due"]
        if [len(age) for age in ages] != [layer.width for layer in self.layers]:
            raise ValueError(
                f"CBP state for layers of {[len(age) for age in ages]} units, the backbone has "
                f"{[layer.width for layer in self.layers]}"
            )
        self.ages = [torch.as_tensor(age, dtype=torch.long).clone().cpu() for age in ages]
        self.units_due = [float(value) for value in due]

    # ---- recording the activations ------------------------------------------------------------
    def start_recording(self) -> None:
        """Hook every hidden layer's activation; find the head layers that produce this task's logits.

        Called at the start of each task's training (``on_train_start``); the hooks record only in
        training mode, so validation passes do not count.
        """
        self.stop_recording()
        for index, layer in enumerate(self.layers):
            hook = functools.partial(self._record_activation, index)
            self._hooks.append(layer.activation.register_forward_hook(hook))
        self._output_layers = self.output_layers(self.task_id)

    def stop_recording(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self._activations[:] = [None] * len(self.layers)

    def _record_activation(self, index: int, module: nn.Module, inputs, output: Tensor) -> None:
        if module.training:
            # [batch, units] -> the batch mean of |h| per unit: one reduction, no per-sample work
            self._activations[index] = output.detach().abs().flatten(0, -2).mean(0)

    def output_layers(self, task_id: int) -> list[nn.Linear]:
        """The ``Linear`` layers of the heads that produce task ``task_id``'s logits (the paper's output layer).

        Found by running the heads once on a zero feature and noting which of their ``Linear``
        layers over the features were called: TIL the task's head, CIL every block, DIL the head.
        """
        called: list[nn.Linear] = []
        candidates = [m for m in self.heads.modules() if self._reads_features(m)]
        handles = [m.register_forward_hook(lambda m, i, o: called.append(m)) for m in candidates]
        try:
            reference = next(self.heads.parameters())
            with torch.no_grad():
                self.heads(reference.new_zeros(1, self.heads.input_dim), task_id)
        finally:
            for handle in handles:
                handle.remove()
        if not called:
            raise RuntimeError(f"CBP: no Linear layer of {type(self.heads).__name__} reads the features")
        return list(dict.fromkeys(called))

    def _reads_features(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear) and module.in_features == self.layers[-1].width

    def on_train_start(self) -> None:
        self.start_recording()

    def on_train_end(self) -> None:
        self.stop_recording()

    # ---- one step of generate-and-test (Algorithm 1's inner loop) ------------------------------
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        self.update_utilities_and_ages()
        self.replace_due_units(self.trainer.optimizers)
        if self.is_logging_step(batch_idx):  # a host count: logging it reads nothing from the device
            self.log(
                task_metric("train/units_replaced", self.task_id),
                float(sum(self.replaced_this_task)),
                on_step=True,
                on_epoch=False,
            )

    @torch.no_grad()
    def update_utilities_and_ages(self) -> None:
        """Steps 1-2 for every hidden layer: ages + 1, Eq. 1 with the last training forward's activations."""
        activations = self._activations
        if any(a is None for a in activations):
            raise RuntimeError(
                "CBP: no activations were recorded for this step; start_recording() must run before the "
                "training forward (Lightning calls it in on_train_start)"
            )
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            # every process must see the same utilities, or they would replace different units
            joined = trainer.strategy.reduce(torch.cat(activations), reduce_op="mean")
            activations = list(joined.split([layer.width for layer in self.layers]))
        for index, layer in enumerate(self.layers):
            self.ages[index] += 1
            if layer.outgoing is not None:
                outgoing = layer.outgoing.weight.abs().sum(0)
            else:  # the last hidden layer: the current task's output layer(s)
                outgoing = sum(head.weight.abs().sum(0) for head in self._output_layers)
            contribution_utility(self.utility(index), activations[index], outgoing, self.decay_rate)
        self._activations[:] = [None] * len(self.layers)

    @torch.no_grad()
    def replace_due_units(self, optimizers: Sequence[torch.optim.Optimizer] = ()) -> list[Tensor]:
        """Steps 3-4 for every hidden layer; returns the indices of the units reinitialised per layer."""
        replaced = []
        for index, ages in enumerate(self.ages):
            mature = ages > self.maturity_threshold
            eligible = int(mature.sum())  # on the host: no device synchronisation
            self.units_due[index] += self.replacement_rate * eligible
            count = min(int(self.units_due[index]), eligible)
            if count < 1:
                replaced.append(torch.empty(0, dtype=torch.long))
                continue
            self.units_due[index] -= count
            utility = self.utility(index)
            candidates = utility.masked_fill(~mature.to(utility.device), math.inf)
            units = torch.topk(candidates, count, largest=False).indices
            self.reinitialise_units(index, units, optimizers)
            replaced.append(units.cpu())
        return replaced

    @torch.no_grad()
    def reinitialise_units(
        self, layer_index: int, units: Tensor, optimizers: Sequence[torch.optim.Optimizer] = ()
    ) -> None:
        """Reinitialise ``units`` of hidden layer ``layer_index``: new incoming, zero outgoing weights."""
        layer = self.layers[layer_index]
        units = units.to(layer.incoming.weight.device)
        weight, bias = initial_incoming_weights(layer.incoming, len(units))
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            weight, bias = trainer.strategy.broadcast((weight, bias), src=0)  # one draw for all processes
        layer.incoming.weight.index_copy_(0, units, weight)
        reset_optimizer_state(optimizers, layer.incoming.weight, 0, units)
        if bias is not None:
            layer.incoming.bias.index_copy_(0, units, bias)
            reset_optimizer_state(optimizers, layer.incoming.bias, 0, units)
        if layer.norm is not None:  # the unit's batch norm as initialised: identity on fresh statistics
            norm = layer.norm
            for tensor, value in ((norm.weight, 1.0), (norm.bias, 0.0)):
                if tensor is not None:
                    tensor.index_fill_(0, units, value)
                    reset_optimizer_state(optimizers, tensor, 0, units)
            if norm.running_mean is not None:
                norm.running_mean.index_fill_(0, units, 0.0)
                norm.running_var.index_fill_(0, units, 1.0)
        if layer.outgoing is not None:
            consumers = [layer.outgoing]
        else:  # every head reads the features: none may read the new unit
            consumers = [m for m in self.heads.modules() if self._reads_features(m)]
        for consumer in consumers:
            consumer.weight.index_fill_(1, units, 0.0)
            reset_optimizer_state(optimizers, consumer.weight, 1, units)
        self.utility(layer_index).index_fill_(0, units, 0.0)
        host_units = units.cpu()
        self.ages[layer_index][host_units] = 0
        self.replaced_this_task[layer_index] += len(host_units)
