"""TAK's task-vector files: ``task_<t>.pt``, one per task, written by ``TAKOutputs`` and read back
by ``TAK`` (``load_task_vectors``).

Porrello et al. (ICLR 2026) keep each task's update tau_t; the reference code saves them and can
start a later run from them (its ``--resume`` / ``--load_path``). A file holds the vector under the
keys ``clcore.task_arithmetic.TaskVector.load`` reads (``kind``: ``linear`` for tangent-space
vectors, ``standard`` otherwise; ``vector``: parameter name -> tensor), the 1-based task number,
and the heads' state after that task (trainable heads are part of what the task learnt).
Tensors, strings and ints only: it loads with ``weights_only=True`` (``load_tensors_safely``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from torch import Tensor

from clcore.utils.safe_load import load_tensors_safely


def task_vector_file(folder: str | Path, task: int) -> Path:
    """``<folder>/task_<task + 1>.pt`` (``task`` is 0-based)."""
    return Path(folder) / f"task_{task + 1}.pt"


def vector_kind(tangent: bool) -> str:
    return "linear" if tangent else "standard"


def task_vector_content(
    vector: Mapping[str, Tensor], tangent: bool, task: int, heads_state: Mapping[str, object]
) -> dict:
    """What ``task_<t>.pt`` holds for task ``task`` (0-based), tensors on the CPU."""
    return {
        "kind": vector_kind(tangent),
        "vector": dict(vector),
        "task": task + 1,
        "heads": {
            name: value.detach().cpu() if isinstance(value, Tensor) else value
            for name, value in heads_state.items()
        },
    }


def read_task_vector(path: Path, tangent: bool, parameter_names: Iterable[str]) -> dict:
    """The content of ``path``, refused unless it is a vector of this kind over exactly these parameters."""
    saved = load_tensors_safely(path, "task vector file")
    expected_kind = vector_kind(tangent)
    if not isinstance(saved, dict):
        raise ValueError(f"{path} holds a {type(saved).__name__}, not a task vector file")
    if saved.get("kind") != expected_kind or set(saved.get("vector", {})) != set(parameter_names):
        raise ValueError(
            f"{path} holds a {saved.get('kind')} task vector over other parameters than this run's "
            f"{expected_kind} one: was it saved with the same tangent / ft_* options and backbone?"
        )
    return saved
