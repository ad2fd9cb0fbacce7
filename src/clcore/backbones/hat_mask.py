"""HAT mask backbones: per-task unit masks on every Linear / Conv2d layer (Serra et al., ICML 2018).

Hard Attention to the Task gates the output units of each weighted layer ``l`` with a task mask
``a_l^t = sigmoid(s * e_l^t)``, ``e_l^t`` a learnable task embedding with one value per unit
(Sec. 2.2). Where the mask is applied, in every ``HATMaskBackbone``:

    h_l = activation(a_l^t * norm_l^t(layer_l(h_{l-1})))

i.e. after the linear/conv and after batch norm (when there is one), *before* the activation.
Masking after batch norm matters: a norm's shift would otherwise turn masked units back on.
For ReLU and masks ``a >= 0``, ``relu(a * z) = a * relu(z)``, so this equals masking after the
activation. Binary test masks then make a masked unit output exactly 0, which is what makes
Eq. 2 protect earlier tasks exactly: a weight into a masked unit, or out of one, cannot change
any earlier task's output.

State (all in ``state_dict``, sized at construction by ``num_tasks`` so a checkpoint loads into
a freshly built backbone before any task is set up):

- ``gates.<layer>.embeddings.<t>``: the task embedding ``e_l^t`` (a parameter per task, so only
  the current task's embedding is ever handed to an optimizer or receives a gradient);
- ``gates.<layer>.test_masks``: ``[num_tasks, units]`` binary masks ``1[e_l^t > 0]`` stored at
  the end of each task (Sec. 2.2: binary at test);
- ``gates.<layer>.cumulative_mask``: ``[units]`` ``a_l^{<=t} = max(a_l^{<t}, a_l^t)`` (Sec. 2.3);
- ``task_mask_stored``: ``[num_tasks]`` which tasks' masks are stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from clcore.backbones.base import CLBackbone
from clcore.config_rules import is_int, raise_if_problems

MASK_MODES = ("train", "val", "test")
EmbeddingInit = Literal["N01", "U-11", "U01", "U-10", "last"]  # HAT's embedding_init annotation
EMBEDDING_INIT_MODES = get_args(EmbeddingInit)
AGGREGATIONS = ("min", "max", "mean")


class TaskMaskGate(nn.Module):
    """One masked layer's task embeddings and stored masks (Serra et al. 2018, Sec. 2.2-2.3)."""

    def __init__(self, num_units: int, num_tasks: int) -> None:
        super().__init__()
        self.num_units = num_units
        self.embeddings = nn.ParameterList([nn.Parameter(torch.randn(num_units)) for _ in range(num_tasks)])
        self.register_buffer("test_masks", torch.zeros(num_tasks, num_units))
        self.register_buffer("cumulative_mask", torch.zeros(num_units))


class HATMaskBackbone(CLBackbone):
    """A backbone whose Linear/Conv2d layers are gated per task by HAT unit masks.

    Subclasses build their layers, call ``register_masked_layer(name, layer)`` for every
    weighted layer in forward order (names without dots), and implement

    - ``masked_forward(x, masks, task_id)``: the forward pass with the given unit masks;
    - ``input_unit_masks(unit_masks)``: for each masked layer, the unit mask of its *input*
      (``None`` for a layer that reads the network input, which has no mask). This is what
      turns unit masks into per-weight measures (Eq. 2) and depends on the wiring (a residual
      block's input is the max of its branch and shortcut masks);
    - ``task_specific_modules(task_id)`` (optional): modules used only by that task (per-task
      batch norm), trained only during that task.

    Args:
        output_dim: feature size the heads read.
        num_tasks: how many tasks the backbone has room for (embeddings, stored masks, per-task
            norms are allocated for all of them up front so checkpoints load as they are).
    """

    @classmethod
    def config_problems(cls, options: Mapping[str, Any], *, num_tasks: int | None = None) -> list[str]:
        """Room for every task of the run: embeddings and masks exist for ``backbone.num_tasks`` tasks."""
        problems = super().config_problems(options, num_tasks=num_tasks)
        own = options.get("num_tasks")
        if own is None:  # null in the config: filled in from benchmark.num_tasks
            return problems
        if not is_int(own) or own < 1:
            problems.append(
                f"backbone.num_tasks={own!r}: must be an integer >= 1, or null to follow benchmark.num_tasks"
            )
        elif is_int(num_tasks) and own < num_tasks:
            problems.append(
                f"backbone.num_tasks={own} has room for fewer tasks than benchmark.num_tasks={num_tasks}: "
                f"set backbone.num_tasks=null (it follows the benchmark) or >= {num_tasks}"
            )
        return problems

    def __init__(self, output_dim: int, num_tasks: int) -> None:
        super().__init__(output_dim)
        raise_if_problems(type(self).config_problems({"num_tasks": num_tasks}))
        self.num_tasks = num_tasks
        self.gates = nn.ModuleDict()
        self.register_buffer("task_mask_stored", torch.zeros(num_tasks, dtype=torch.bool))
        # References to modules registered elsewhere in the tree (a plain dict, so they are
        # not registered twice); kept in forward order.
        self._masked_layers: dict[str, nn.Linear | nn.Conv2d] = {}

    # ---- construction ------------------------------------------------------------------------
    def register_masked_layer(self, name: str, layer: nn.Linear | nn.Conv2d) -> None:
        if "." in name:
            raise ValueError(f"masked layer names may not contain '.', got {name!r}")
        if not isinstance(layer, nn.Linear | nn.Conv2d):
            raise TypeError(f"HAT masks Linear and Conv2d layers, got {type(layer).__name__} for {name!r}")
        num_units = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        self._masked_layers[name] = layer
        self.gates[name] = TaskMaskGate(num_units, self.num_tasks)

    @property
    def masked_layers(self) -> dict[str, nn.Linear | nn.Conv2d]:
        """Masked layer name -> the Linear/Conv2d module, in forward order."""
        return dict(self._masked_layers)

    @property
    def masked_layer_names(self) -> list[str]:
        return list(self._masked_layers)

    @property
    def num_units(self) -> dict[str, int]:
        return {name: gate.num_units for name, gate in self.gates.items()}

    # ---- subclass contract -------------------------------------------------------------------
    def masked_forward(self, x: Tensor, masks: dict[str, Tensor], task_id: int) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def input_unit_masks(self, unit_masks: dict[str, Tensor]) -> dict[str, Tensor | None]:  # pragma: no cover
        raise NotImplementedError

    def task_specific_modules(self, task_id: int) -> list[nn.Module]:
        """Modules only task ``task_id`` uses (e.g. its batch norms). Default: none."""
        return []

    # ---- masks -------------------------------------------------------------------------------
    def _check_task(self, task_id: int) -> None:
        if not 0 <= task_id < self.num_tasks:
            raise IndexError(
                f"task {task_id + 1} is out of range: this backbone was built for {self.num_tasks} tasks"
            )

    def mask(self, task_id: int, mode: str, s: float | None = None) -> dict[str, Tensor]:
        """Unit masks of task ``task_id``: layer name -> ``[units]`` tensor.

        - ``"train"``: ``sigmoid(s * e)`` with the annealed ``s`` (Sec. 2.4), differentiable in ``e``;
        - ``"val"``: ``sigmoid(s_max * e)``; pass ``s=s_max`` (the backbone does not own s_max);
        - ``"test"``: the stored binary mask ``1[e > 0]`` of that task (Sec. 2.2). A task whose
          mask is not stored yet (evaluated before its training ended) gets ``1[e > 0]`` of its
          current embedding, the same rule.
        """
        self._check_task(task_id)
        if mode not in MASK_MODES:
            raise ValueError(f"HAT mask mode must be one of {MASK_MODES}, got {mode!r}")
        if mode == "test":
            if bool(self.task_mask_stored[task_id]):
                return {name: gate.test_masks[task_id] for name, gate in self.gates.items()}
            return {
                name: (gate.embeddings[task_id].detach() > 0).to(gate.test_masks.dtype)
                for name, gate in self.gates.items()
            }
        if s is None:
            raise ValueError(
                f"HAT mask mode {mode!r} needs the gate scale s ('train': annealed s, 'val': s_max)"
            )
        return {name: torch.sigmoid(s * gate.embeddings[task_id]) for name, gate in self.gates.items()}

    def forward(self, x: Tensor, task_id: int, mode: str = "test", s: float | None = None) -> Tensor:
        return self.masked_forward(x, self.mask(task_id, mode, s), task_id)

    def store_mask(self, task_id: int) -> None:
        """Store task ``task_id``'s binary mask and fold it into the cumulative mask (Sec. 2.3).

        Idempotent: storing the same task twice leaves the cumulative mask unchanged (max).
        """
        self._check_task(task_id)
        with torch.no_grad():
            for gate in self.gates.values():
                binary_mask = (gate.embeddings[task_id] > 0).to(gate.test_masks.dtype)
                gate.test_masks[task_id] = binary_mask
                torch.maximum(gate.cumulative_mask, binary_mask, out=gate.cumulative_mask)
            self.task_mask_stored[task_id] = True

    def test_mask(self, task_id: int) -> dict[str, Tensor]:
        return self.mask(task_id, "test")

    def cumulative_mask(self) -> dict[str, Tensor]:
        """``a^{<=t}`` over every task stored so far."""
        return {name: gate.cumulative_mask for name, gate in self.gates.items()}

    def previous_cumulative_mask(self, task_id: int) -> dict[str, Tensor]:
        """``a^{<t}``: max over the stored masks of tasks before ``task_id`` (zeros for task 1).

        Computed from the stored per-task masks rather than the running cumulative buffer so it
        stays exact if a task is trained again after its mask was stored (e.g. a resumed task).
        ``task_id = k + 1`` gives the cumulative mask as it was right after task ``k``
        (``task_id`` may be ``num_tasks``).
        """
        if not 0 <= task_id <= self.num_tasks:
            raise IndexError(
                f"task {task_id + 1} is out of range: this backbone was built for {self.num_tasks} tasks"
            )
        previous = self.task_mask_stored[:task_id]
        return {
            name: (gate.test_masks[:task_id] * previous[:, None]).amax(dim=0)
            if task_id > 0
            else torch.zeros_like(gate.cumulative_mask)
            for name, gate in self.gates.items()
        }

    # ---- unit masks -> parameter-wise measures -----------------------------------------------
    def parameter_measures(
        self, unit_measure: dict[str, Tensor], aggregation: str = "min"
    ) -> dict[str, tuple[Tensor, Tensor | None]]:
        """Per-parameter measures from per-unit ones: layer name -> ``(weight_measure, bias_measure)``.

        A weight ``w_ij`` joins unit ``i`` of layer ``l`` and unit ``j`` of its input; its measure
        aggregates the two (``min`` is Eq. 2 of Serra et al. 2018; ``max``/``mean`` for variants).
        A layer reading the network input (no mask) uses the unit's own measure. Biases use the
        unit's own measure. Conv weights ``[out, in, kh, kw]`` take the measure of their output and
        input channel. Results are broadcast views with the parameters' shapes (``bias`` is
        ``None`` for a layer without bias).
        """
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        input_measure = self.input_unit_masks(unit_measure)
        measures: dict[str, tuple[Tensor, Tensor | None]] = {}
        for name, layer in self._masked_layers.items():
            weight = layer.weight
            trailing = (1,) * (weight.dim() - 2)
            out_measure = unit_measure[name].reshape(-1, 1, *trailing)
            in_measure = input_measure[name]
            if in_measure is None:
                weight_measure = out_measure
            else:
                in_measure = in_measure.reshape(1, -1, *trailing)
                if aggregation == "min":
                    weight_measure = torch.minimum(out_measure, in_measure)
                elif aggregation == "max":
                    weight_measure = torch.maximum(out_measure, in_measure)
                else:
                    weight_measure = (out_measure + in_measure) / 2
            bias_measure = unit_measure[name] if layer.bias is not None else None
            measures[name] = (weight_measure.expand_as(weight), bias_measure)
        return measures

    # ---- task embeddings ---------------------------------------------------------------------
    def initialise_task_embedding(self, task_id: int, mode: str = "N01") -> None:
        """(Re)initialise task ``task_id``'s embeddings before it trains.

        ``N01``: N(0, 1) (the reference HAT code); ``U-11``/``U01``/``U-10``: uniform on
        [-1, 1] / [0, 1] / [-1, 0]; ``last``: a copy of the previous task's embedding (task 1,
        having none, uses N(0, 1)).
        """
        self._check_task(task_id)
        if mode not in EMBEDDING_INIT_MODES:
            raise ValueError(f"HAT embedding init must be one of {EMBEDDING_INIT_MODES}, got {mode!r}")
        with torch.no_grad():
            for gate in self.gates.values():
                embedding = gate.embeddings[task_id]
                if mode == "last" and task_id > 0:
                    embedding.copy_(gate.embeddings[task_id - 1])
                elif mode in ("N01", "last"):
                    embedding.normal_(0.0, 1.0)
                elif mode == "U-11":
                    embedding.uniform_(-1.0, 1.0)
                elif mode == "U01":
                    embedding.uniform_(0.0, 1.0)
                else:
                    embedding.uniform_(-1.0, 0.0)

    def embedding_parameters(self, task_id: int) -> list[nn.Parameter]:
        self._check_task(task_id)
        return [gate.embeddings[task_id] for gate in self.gates.values()]

    def task_embeddings(self, task_id: int) -> dict[str, nn.Parameter]:
        self._check_task(task_id)
        return {name: gate.embeddings[task_id] for name, gate in self.gates.items()}

    # ---- which parameters a task trains ------------------------------------------------------
    def shared_parameters(self) -> list[nn.Parameter]:
        """Weights and biases of the masked layers: shared by all tasks, guarded by Eq. 2."""
        return [p for layer in self._masked_layers.values() for p in layer.parameters()]

    def task_parameters(self, task_id: int) -> list[nn.Parameter]:
        """Parameters only task ``task_id`` uses: its embeddings and task-specific modules."""
        specific = [p for module in self.task_specific_modules(task_id) for p in module.parameters()]
        return self.embedding_parameters(task_id) + specific

    def parameters_for_task(self, task_id: int) -> list[nn.Parameter]:
        """Everything training task ``task_id`` may update: shared + that task's own parameters."""
        return self.shared_parameters() + self.task_parameters(task_id)


def units_used(unit_masks: dict[str, Tensor] | Iterable[Tensor]) -> Tensor:
    """Fraction of all units (over every layer) that a binary mask keeps."""
    masks = list(unit_masks.values()) if isinstance(unit_masks, dict) else list(unit_masks)
    kept = sum(mask.sum() for mask in masks)
    total = sum(mask.numel() for mask in masks)
    return kept / total
