"""TAK's task-vector files: ``task_<t>.pt``, one per task, written by ``TAKOutputs`` and read back
by ``TAK`` (``load_task_vectors``).

Porrello et al. (ICLR 2026) keep each task's update tau_t; the reference code saves them and can
start a later run from them (its ``--resume`` / ``--load_path``). A file holds the vector under the
keys ``clcore.task_arithmetic.TaskVector.load`` reads (``kind``: ``linear`` for tangent-space
vectors, ``standard`` otherwise; ``vector``: parameter name -> tensor), the 1-based task number,
and the heads' state after that task (trainable heads are part of what the task learnt).
Tensors, strings and ints only: it loads with ``weights_only=True`` (``load_tensors_safely``).

The reference's own files (a list of tensors and a ``_meta.pt`` of their names) are read by
``read_mammoth_task_vector``, which maps them to this content (without heads).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
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


# -- the reference's (Mammoth's) task-vector files ----------------------------------------------
# The reference (aimagelab/mammoth, ``models/tak.py``, ``TAK.end_task`` with --save_task_vectors=1)
# writes, after task t (0-based), next to each other under <checkpoint_path>/<fisher_cache>/:
#
# - ``<job>_<dataset>_task_<t>.pt``: ``torch.save`` of a list of tensors, the update of every
#   parameter of its visual encoder (CPU, float32), in the order of ``delta_w_names``; parameters
#   of kinds it does not fine-tune (``--ft_*=0``) are there as zeros. With LoRA an element is the
#   product up @ down (an element that is itself a list [up, down] is read as that product);
# - ``<job>_<dataset>_task_<t>_meta.pt``: ``{"delta_w_names": [...]}``, the parameter names;
# - ``<job>_<dataset>_task_<t>_cls_head.pt``: the state dict of the zero-shot head over every class
#   of the dataset (``weight`` [classes, embed_dim] = 100 x the normalised text embeddings, ``bias``
#   zeros). It is not read: clcore's TAK rebuilds its frozen zero-shot heads from the class names
#   (``frozen_head``), per task, and this file has one matrix for all classes with no task split.
#
# and ``<checkpoint_path>/<job>_<dataset>_args.json``, the run's options (``tangent`` among them),
# whose path is what the reference's --load_path takes (it reads ``..._task_<t>.pt`` beside it).
# Its parameter names are those of OpenAI CLIP's ``VisionTransformer`` after the reference's
# surgery (attention as ``attn.qkv`` / ``attn.proj`` linears, the projection as ``lin_proj``, the
# class token as ``cls_token_layer.class_embedding``); ``mammoth_parameter_name`` gives clcore's name
# for each (open_clip's tower made KFAC-ready by ``make_kfac_ready``, inside ``CLIPVisualBackbone``).

MAMMOTH_PREFIX = "visual.trunk."  # clcore's names of the open_clip tower's parameters
_MAMMOTH_RENAMES = {  # the reference's module names -> clcore's (after MAMMOTH_PREFIX)
    "attn.qkv.": "attn.in_proj.",
    "attn.proj.": "attn.out_proj.",
}
_MAMMOTH_TOP_LEVEL = ("conv1.", "positional_embedding", "ln_pre.", "ln_post.", "transformer.resblocks.")
_MAMMOTH_TASK_FILE = re.compile(r"_task_(\d+)\.pt$")


def is_mammoth_run(load_path: object) -> bool:
    """Whether ``load_path`` names a reference (Mammoth) run: its ``<job>_<dataset>_args.json``, what
    the reference's ``--load_path`` takes; clcore's own runs are a ``task_vectors/`` folder."""
    return isinstance(load_path, str | Path) and str(load_path).endswith("_args.json")


def mammoth_task_vector_file(load_path: str | Path, task: int) -> Path:
    """The reference's file of task ``task`` (0-based, as in its names) for its ``--load_path``.

    ``load_path`` is a run's ``<job>_<dataset>_args.json`` (what the reference's --load_path takes)
    or the ``<job>_<dataset>`` prefix of its files.
    """
    prefix = str(load_path)
    if prefix.endswith("_args.json"):
        prefix = prefix[: -len("_args.json")]
    return Path(f"{prefix}_task_{task}.pt")


def mammoth_parameter_name(name: str) -> str | None:
    """clcore's name of the reference's visual-encoder parameter ``name``, or None if it has none.

    ``lin_proj.weight`` (the projection, [embed_dim, width]) -> ``visual.projection.weight`` (the
    same layout); ``transformer.resblocks.<i>.attn.qkv.weight`` -> ``visual.trunk.transformer.
    resblocks.<i>.attn.in_proj.weight`` (both CLIP's packed q, k, v projection); ``attn.proj`` ->
    ``attn.out_proj``; ``cls_token_layer.class_embedding`` -> ``visual.trunk.class_embedding``; the
    rest (conv1, positional_embedding, ln_pre, ln_1, ln_2, mlp.c_fc, mlp.c_proj, ln_post) keeps its
    name under ``visual.trunk.``. Shapes are the same on both sides.
    """
    if name == "lin_proj.weight":
        return "visual.projection.weight"
    if name == "cls_token_layer.class_embedding":
        return MAMMOTH_PREFIX + "class_embedding"
    if not name.startswith(_MAMMOTH_TOP_LEVEL):
        return None
    for old, new in _MAMMOTH_RENAMES.items():
        name = name.replace(old, new)
    return MAMMOTH_PREFIX + name


def read_mammoth_task_vector(
    path: str | Path,
    tangent: bool | None = None,
    parameters: Mapping[str, Sequence[int]] | Iterable[str] | None = None,
) -> dict:
    """The reference's task-vector file ``path`` (and its ``_meta.pt``) as clcore's task-vector content.

    Returns ``{"kind", "vector", "task", "unmapped"}``: ``kind`` and ``vector`` as ``TaskVector.load``
    reads them (``vector`` keyed by clcore's names, ``mammoth_parameter_name``), ``task`` 1-based (the
    reference's file names count from 0), ``unmapped`` the reference's names with no clcore name
    (left out of ``vector``). No heads: see the comment above.

    ``tangent``: whether this run trains tangent-space vectors (kind ``linear``). The file does not
    say; when the reference's ``<job>_<dataset>_args.json`` is beside it (or in the folder above,
    where the reference writes it), its ``tangent`` is used (and must agree with ``tangent`` if both
    are given); with neither, ``ValueError``.

    ``parameters``: this run's parameters (names, or name -> shape as ``TAKParameters.shapes``). The
    vector is then exactly over them: every one must be in the file (with its shape); entries of
    other parameters are dropped if they are all zeros (the reference stores zeros for the kinds it
    does not fine-tune), refused otherwise (that run fine-tuned kinds this one does not: other
    ``ft_*`` options), and so are unmapped entries that are not zero.
    """
    path = Path(path)
    saved = load_tensors_safely(path, "Mammoth task vector file")
    meta_path = path.with_name(path.name[: -len(".pt")] + "_meta.pt")
    if not meta_path.exists():
        raise FileNotFoundError(
            f"{meta_path} not found: the reference writes the parameter names of {path.name} there "
            "(a list of tensors alone cannot be mapped to parameters)"
        )
    meta = load_tensors_safely(meta_path, "Mammoth task vector names")
    names = meta.get("delta_w_names") if isinstance(meta, dict) else None
    if (
        not isinstance(saved, (list, tuple))
        or not isinstance(names, (list, tuple))
        or len(names) != len(saved)
    ):
        raise ValueError(
            f"{path} and {meta_path.name} are not the reference's task-vector files: expected a list of "
            "tensors and {'delta_w_names': [...]} of the same length"
        )
    matched = _MAMMOTH_TASK_FILE.search(path.name)
    task = int(matched.group(1)) + 1 if matched else None
    kind = vector_kind(_mammoth_tangent(path, tangent))

    vector: dict[str, Tensor] = {}
    unmapped: dict[str, Tensor] = {}
    for name, value in zip(names, saved):
        tensor = _mammoth_tensor(value, path, name)
        target = mammoth_parameter_name(name)
        if target is None:
            unmapped[name] = tensor
        else:
            vector[target] = tensor
    if parameters is not None:
        vector = _restricted(vector, unmapped, parameters, path)
    return {"kind": kind, "vector": vector, "task": task, "unmapped": sorted(unmapped)}


def _mammoth_tensor(value: object, path: Path, name: str) -> Tensor:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, Tensor) for v in value):
        value = value[0] @ value[1]  # LoRA [up, down]: the update up @ down, as the reference applies it
    elif isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if not isinstance(value, Tensor) or not torch.is_floating_point(value):
        raise ValueError(f"{path}: the entry of {name!r} is not a floating-point tensor")
    return value.detach()


def _mammoth_tangent(path: Path, tangent: bool | None) -> bool:
    matched = _MAMMOTH_TASK_FILE.search(path.name)
    args_path = path.with_name(path.name[: matched.start()] + "_args.json") if matched else None
    saved = None
    if args_path is not None and not args_path.is_file():  # the reference writes it one folder up
        args_path = path.parent.parent / args_path.name
    if args_path is not None and args_path.is_file():
        saved = json.loads(args_path.read_text()).get("tangent")
    if saved is None:
        if tangent is None:
            raise ValueError(
                f"{path}: whether its vector is a tangent-space one is not known (no _args.json beside it "
                "with 'tangent'): pass tangent"
            )
        return bool(tangent)
    if tangent is not None and bool(saved) != bool(tangent):
        raise ValueError(
            f"{path} was trained with tangent={int(saved)} ({args_path.name}), this run has tangent={int(tangent)}"
        )
    return bool(saved)


def _restricted(
    vector: dict[str, Tensor],
    unmapped: dict[str, Tensor],
    parameters: Mapping[str, Sequence[int]] | Iterable[str],
    path: Path,
) -> dict[str, Tensor]:
    wanted = dict(parameters) if isinstance(parameters, Mapping) else dict.fromkeys(parameters)
    missing = [name for name in wanted if name not in vector]
    if missing:
        raise ValueError(f"{path} has no entry for this run's parameters {missing[:5]} (of {len(missing)})")
    wrong = [
        name
        for name, shape in wanted.items()
        if shape is not None and tuple(vector[name].shape) != tuple(shape)
    ]
    if wrong:
        raise ValueError(f"{path}: entries {wrong[:5]} have another shape than this run's parameters")
    left_out = {name: tensor for name, tensor in vector.items() if name not in wanted} | unmapped
    trained = sorted(name for name, tensor in left_out.items() if bool(tensor.any()))
    if trained:
        raise ValueError(
            f"{path} updates parameters this run does not fine-tune, e.g. {trained[:5]}: it was trained with "
            "other ft_* options (or another backbone)"
        )
    return {name: vector[name] for name in wanted}
