"""Task vectors and their arithmetic.

Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023 (Sec. 2): a task vector is
tau_t = theta_t - theta_0; an edited model is theta_0 + alpha * sum_t tau_t (addition), or
theta_0 - alpha * tau_t (negation).

Ortiz-Jimenez et al., "Task Arithmetic in the Tangent Space", NeurIPS 2023: a model fine-tuned as a
``LinearizedModel`` yields a *linear* task vector, the delta of the linear model's parameters.
"Post-hoc linearisation" applies a standard task vector to the linearised model; the reverse applies
a linear task vector to the non-linear network. Both kinds are keyed by the wrapped model's
parameter names, so a cast only changes how ``apply_to`` uses the vector.

Only floating-point entries are task-vector entries: integer buffers (``num_batches_tracked``) are
counters, not weights.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from numbers import Real
from typing import TypeVar

import torch
from torch import Tensor, nn

from clcore.task_arithmetic.linearize import LinearizedModel
from clcore.utils.atomic import torch_save_atomic
from clcore.utils.safe_load import load_tensors_safely

TV = TypeVar("TV", bound="TaskVector")


def _float_entries(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {name: tensor for name, tensor in state.items() if torch.is_floating_point(tensor)}


class TaskVector:
    """A standard (non-linear) task vector: ``{name: theta_ft[name] - theta_0[name]}``.

    Arithmetic: ``a + b``, ``a - b``, ``-a``, ``c * a``, ``a * c``, ``sum([a, b, ...])``.
    Vectors combine only with vectors of the same kind and the same entries (names and shapes).
    """

    kind = "standard"

    def __init__(self, vector: Mapping[str, Tensor]) -> None:
        not_float = [name for name, tensor in vector.items() if not torch.is_floating_point(tensor)]
        if not_float:
            raise ValueError(f"task-vector entries must be floating point; not: {not_float[:5]}")
        self.vector: dict[str, Tensor] = {name: tensor.detach() for name, tensor in vector.items()}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_state_dicts(
        cls: type[TV], pretrained: Mapping[str, Tensor], finetuned: Mapping[str, Tensor]
    ) -> TV:
        """tau = finetuned - pretrained over the floating-point entries of both state dicts."""
        theta_0, theta_ft = _float_entries(pretrained), _float_entries(finetuned)
        if theta_0.keys() != theta_ft.keys():
            only_pre = sorted(theta_0.keys() - theta_ft.keys())[:5]
            only_ft = sorted(theta_ft.keys() - theta_0.keys())[:5]
            raise ValueError(
                f"state dicts differ: only in pretrained {only_pre}, only in finetuned {only_ft}"
            )
        with torch.no_grad():
            return cls({name: theta_ft[name] - theta_0[name] for name in theta_0})

    @classmethod
    def from_models(cls: type[TV], pretrained: nn.Module, finetuned: nn.Module) -> TV:
        return cls.from_state_dicts(pretrained.state_dict(), finetuned.state_dict())

    # -- container protocol -------------------------------------------------------------------
    def __getitem__(self, name: str) -> Tensor:
        return self.vector[name]

    def __contains__(self, name: object) -> bool:
        return name in self.vector

    def __iter__(self) -> Iterator[str]:
        return iter(self.vector)

    def __len__(self) -> int:
        return len(self.vector)

    def keys(self):
        return self.vector.keys()

    def items(self):
        return self.vector.items()

    def __repr__(self) -> str:
        numel = sum(tensor.numel() for tensor in self.vector.values())
        return f"{type(self).__name__}({len(self.vector)} entries, {numel} numbers)"

    # -- arithmetic ---------------------------------------------------------------------------
    def _check_compatible(self, other: TaskVector) -> None:
        if type(other) is not type(self):
            raise TypeError(
                f"cannot combine a {type(self).__name__} with a {type(other).__name__}: "
                "cast one first (to_linear() / to_nonlinear())"
            )
        if self.vector.keys() != other.vector.keys():
            differing = sorted(self.vector.keys() ^ other.vector.keys())[:5]
            raise ValueError(f"task vectors have different entries, e.g. {differing}")
        for name, tensor in self.vector.items():
            if tensor.shape != other.vector[name].shape:
                raise ValueError(
                    f"entry {name!r}: shape {tuple(tensor.shape)} vs {tuple(other.vector[name].shape)}"
                )

    def __add__(self: TV, other: TaskVector | int) -> TV:
        if isinstance(other, int) and other == 0:  # sum() starts from 0
            return type(self)(dict(self.vector))
        if not isinstance(other, TaskVector):
            return NotImplemented
        self._check_compatible(other)
        return type(self)({name: tensor + other.vector[name] for name, tensor in self.vector.items()})

    __radd__ = __add__

    def __neg__(self: TV) -> TV:
        return type(self)({name: -tensor for name, tensor in self.vector.items()})

    def __sub__(self: TV, other: TaskVector) -> TV:
        if not isinstance(other, TaskVector):
            return NotImplemented
        return self + (-other)

    def __mul__(self: TV, coef: float | Tensor) -> TV:
        if isinstance(coef, Tensor) and coef.numel() != 1:
            raise ValueError("task vectors scale by a scalar")
        if not isinstance(coef, (Real, Tensor)) or isinstance(coef, bool):
            return NotImplemented
        return type(self)({name: tensor * coef for name, tensor in self.vector.items()})

    __rmul__ = __mul__

    def norm(self) -> Tensor:
        """Euclidean norm of the whole vector (all entries flattened together)."""
        squares = [tensor.double().pow(2).sum() for tensor in self.vector.values()]
        return torch.stack(squares).sum().sqrt()

    def to(self: TV, *args, **kwargs) -> TV:
        """``Tensor.to`` on every entry (device and/or dtype)."""
        return type(self)({name: tensor.to(*args, **kwargs) for name, tensor in self.vector.items()})

    # -- kinds --------------------------------------------------------------------------------
    def to_linear(self) -> LinearTaskVector:
        """Post-hoc linearisation: use these deltas as the delta of a ``LinearizedModel``."""
        return LinearTaskVector(self.vector)

    def to_nonlinear(self) -> TaskVector:
        """Use these deltas on the non-linear network."""
        return TaskVector(self.vector)

    # -- editing ------------------------------------------------------------------------------
    def apply_to(self, model: nn.Module, scaling_coef: float = 1.0, inplace: bool = False) -> nn.Module:
        """theta_0 + scaling_coef * tau, where ``model`` holds theta_0 (the pre-trained weights).

        Returns an edited deep copy (``inplace=False``) or edits and returns ``model`` itself.
        Entries of ``model``'s state dict not in the vector are left as they are.
        """
        if isinstance(model, LinearizedModel):
            raise TypeError(
                "a standard task vector applied to a LinearizedModel is post-hoc linearisation: "
                "use task_vector.to_linear().apply_to(linearized_model)"
            )
        _check_coef(scaling_coef)
        edited = model if inplace else copy.deepcopy(model)
        state = edited.state_dict()
        _check_entries_exist(self.vector, state, "model")
        with torch.no_grad():
            # New values first, then load: tied weights (two names, one tensor) get the edit once.
            edited_state = {
                name: state[name] + scaling_coef * delta.to(state[name])
                for name, delta in self.vector.items()
            }
        edited.load_state_dict(edited_state, strict=False)
        return edited

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        torch_save_atomic(
            path, {"kind": self.kind, "vector": {name: t.cpu() for name, t in self.vector.items()}}
        )

    @staticmethod
    def load(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> TaskVector:
        """Load a vector saved with ``save``; returns the kind it was saved as."""
        saved = load_tensors_safely(path, "task vector", map_location=map_location)
        kinds = {cls.kind: cls for cls in (TaskVector, LinearTaskVector)}
        if not isinstance(saved, dict) or saved.get("kind") not in kinds:
            raise ValueError(f"{path} is not a saved task vector (expected keys 'kind' and 'vector')")
        return kinds[saved["kind"]](saved["vector"])


class LinearTaskVector(TaskVector):
    """A linear task vector: the delta of a ``LinearizedModel``'s parameters, theta - theta_0.

    Keyed by the wrapped model's parameter names, like a standard vector of that model.
    """

    kind = "linear"

    @classmethod
    def from_linearized(cls, model: LinearizedModel | Mapping[str, Tensor]) -> LinearTaskVector:
        """From a fine-tuned ``LinearizedModel`` (which stores its own theta_0) or its state dict."""
        if isinstance(model, LinearizedModel):
            with torch.no_grad():
                return cls(model.delta())
        prefix = "model."
        theta = {name[len(prefix) :]: t for name, t in model.items() if name.startswith(prefix)}
        theta_0 = {
            name[len("theta0.") :].replace("/", "."): t
            for name, t in model.items()
            if name.startswith("theta0.")
        }
        if not theta_0:
            raise ValueError("not a LinearizedModel state dict: no 'theta0.' entries")
        with torch.no_grad():
            return cls({name: theta[name] - theta_0[name] for name in theta_0})

    def apply_to(self, model: nn.Module, scaling_coef: float = 1.0, inplace: bool = False) -> nn.Module:
        """Parameters of the linearised ``model`` set to theta_0 + scaling_coef * tau.

        theta_0 is the linearisation point the ``LinearizedModel`` stores, so the result does not
        depend on where its parameters are now. Float buffers in the vector (possible after a cast
        from a standard vector) are added to the current buffers: buffers are not linearised.
        """
        if not isinstance(model, LinearizedModel):
            raise TypeError(
                "a linear task vector applies to a LinearizedModel; for the non-linear network use "
                "task_vector.to_nonlinear().apply_to(model)"
            )
        _check_coef(scaling_coef)
        edited = model if inplace else copy.deepcopy(model)
        theta_0 = edited.theta_0()
        state = edited.model.state_dict()
        _check_entries_exist(self.vector, state, "linearised model")
        with torch.no_grad():
            edited_state = {
                name: (theta_0[name] if name in theta_0 else state[name])
                + scaling_coef * delta.to(state[name])
                for name, delta in self.vector.items()
            }
        edited.model.load_state_dict(edited_state, strict=False)
        return edited


def _check_coef(scaling_coef: float) -> None:
    if not math.isfinite(float(scaling_coef)):
        raise ValueError(f"scaling_coef must be finite, got {scaling_coef}")


def _check_entries_exist(vector: Mapping[str, Tensor], state: Mapping[str, Tensor], what: str) -> None:
    missing = [name for name in vector if name not in state]
    if missing:
        raise KeyError(f"task-vector entries not in the {what}: {missing[:5]}")
    wrong = [name for name in vector if vector[name].shape != state[name].shape]
    if wrong:
        raise ValueError(f"task-vector entries with a shape unlike the {what}'s: {wrong[:5]}")


def unpack_task_vectors(
    task_vectors: Sequence[TaskVector | Mapping[str, Tensor]],
) -> tuple[list[dict[str, Tensor]], type[TaskVector]]:
    """The vectors as plain dicts, and the kind a combination of them should have.

    Checks what merging needs: at least one vector, one kind, identical entries and shapes.
    Plain dicts count as standard task vectors.
    """
    if isinstance(task_vectors, (TaskVector, Mapping)) or len(task_vectors) == 0:
        raise ValueError("expected a non-empty list of task vectors")
    kinds = {type(tv) if isinstance(tv, TaskVector) else TaskVector for tv in task_vectors}
    if len(kinds) > 1:
        raise TypeError(f"cannot mix task-vector kinds {sorted(k.__name__ for k in kinds)}: cast them first")
    vectors = [dict(tv.vector) if isinstance(tv, TaskVector) else dict(tv) for tv in task_vectors]
    reference = vectors[0]
    for index, vector in enumerate(vectors[1:], start=2):
        if vector.keys() != reference.keys():
            differing = sorted(vector.keys() ^ reference.keys())[:5]
            raise ValueError(
                f"task vector {index} has different entries from task vector 1, e.g. {differing}"
            )
        for name, tensor in vector.items():
            if tensor.shape != reference[name].shape:
                raise ValueError(f"task vector {index}, entry {name!r}: shape differs from task vector 1")
    return vectors, kinds.pop()
