"""Reading the per-task KFAC factor files of the reference implementation (Mammoth's ``tak`` model).

Mammoth (``models/tak_utils/utils.py``, ``FisherLoader.store_kfac``) writes five files per task into
its ``--fisher_cache`` folder, ``<dataset>_task_<t>`` with ``t`` its 0-based ``current_task`` and
``<dataset>`` the data set's ``NAME`` (e.g. ``seq-cars``):

- ``<dataset>_task_<t>_aaT.pt``: dict ``"<module>.weight"`` -> the input factor, summed over examples;
- ``<dataset>_task_<t>_ggT.pt``: dict ``"<module>.weight"`` -> the output-gradient factor, summed over
  examples and Monte Carlo samples;
- ``<dataset>_task_<t>_ffT.pt``: dict layer-norm ``weight`` / ``bias`` and
  ``cls_token_layer.class_embedding`` -> their full Gram matrices, summed likewise;
- ``<dataset>_task_<t>_num_aaT.pt`` / ``_num_ggT.pt``: ``torch.tensor([N])``, the examples summed.

(``models/tak_utils/fisher_kfac.py``, ``KFACComputer.compute`` and ``models/tak_utils/hooks.py``.)
The factors are sums; Mammoth's ``TAK.begin_task`` divides ``aaT`` by ``num_aaT``, ``ggT`` by
``num_ggT`` and ``ffT`` by the number of examples, which gives exactly clcore's ``KFACFactors``
(expectations over the ``N`` examples) with clcore's defaults: KFAC-expand (``token_mode="expand"``)
and Monte Carlo samples summed. ``A`` carries the appended-1 row/column last when the layer's bias was
fine-tuned, as clcore's; ``kfac_penalty`` reads that from the shapes.

The mapping onto clcore: Mammoth keys the factors by the parameter names of its image tower, the
OpenAI ``clip`` package's ``VisionTransformer`` after its ``surgery`` (``models/tak_utils/backbone.py``:
each attention rebuilt with ``qkv`` / ``proj`` linears, the projection as ``lin_proj``, the class
token as ``cls_token_layer``). clcore's tower is open_clip's ``VisionTransformer``, which names every
other parameter as OpenAI's, rebuilt by ``clip_kfac_ready.make_kfac_ready`` under
``CLIPVisualBackbone``. ``mammoth_to_clcore_name`` translates:

- ``transformer.resblocks.<i>.attn.qkv.weight`` -> ``visual.trunk.transformer.resblocks.<i>.attn.in_proj.weight``;
- ``transformer.resblocks.<i>.attn.proj.weight`` -> ``visual.trunk.transformer.resblocks.<i>.attn.out_proj.weight``;
- ``transformer.resblocks.<i>.mlp.c_fc.weight`` / ``c_proj`` -> ``visual.trunk.`` + the same name;
- ``lin_proj.weight`` -> ``visual.projection.weight``;
- ``ln_pre`` / ``ln_post`` / ``transformer.resblocks.<i>.ln_1`` / ``ln_2`` -> ``visual.trunk.`` + the same name;
- ``cls_token_layer.class_embedding`` -> ``visual.trunk.class_embedding``.

Both packed Q/K/V weights stack q, k, v in that order ([3 width, width], OpenAI's ``in_proj_weight``
copied by Mammoth's ``surgery``), and ``lin_proj.weight`` is ``proj^T`` like clcore's ``projection``.
Anything else (another tower, e.g. an open_clip timm model) has no translation: pass ``name_map``.
Mammoth's EKFAC files (``_UA`` / ``_UG`` / ``_D`` / ``_num_of_examples``) hold eigenbases, not KFAC
factors, and are not read here.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clcore.algorithms.tak.fisher_cache import REMOTE_PREFIXES
from clcore.algorithms.tak.kfac import KFACFactors
from clcore.utils.safe_load import load_tensors_safely

log = logging.getLogger(__name__)

MAMMOTH_SUFFIXES = ("aaT", "ggT", "ffT", "num_aaT", "num_ggT")
# As Mammoth's FisherLoader recognises its own files (``_extract_dataset_hints_from_entries``).
_MAMMOTH_FILE = re.compile(r"^(?P<dataset>.+)_task_(?P<task>\d+)_(?:num_(?:aaT|ggT)|aaT|ggT|ffT)\.pt$")
_BLOCK = r"transformer\.resblocks\.\d+"
_RENAMES = (
    (re.compile(rf"^({_BLOCK}\.attn)\.qkv\.(weight|bias)$"), r"\1.in_proj.\2"),
    (re.compile(rf"^({_BLOCK}\.attn)\.proj\.(weight|bias)$"), r"\1.out_proj.\2"),
    (re.compile(rf"^({_BLOCK}\.mlp\.c_(?:fc|proj))\.(weight|bias)$"), r"\1.\2"),
    (re.compile(rf"^({_BLOCK}\.ln_[12]|ln_pre|ln_post)\.(weight|bias)$"), r"\1.\2"),
    (re.compile(r"^cls_token_layer\.class_embedding$"), "class_embedding"),
)


def mammoth_to_clcore_name(
    name: str, prefix: str = "visual.trunk.", projection: str = "visual.projection"
) -> str | None:
    """The clcore parameter name of Mammoth's visual-encoder parameter ``name``; None if it has none.

    ``prefix`` is where clcore's open_clip tower sits in the model the factors are used with and
    ``projection`` the output projection's ``nn.Linear`` (the defaults: a ``CLIPVisualBackbone``
    after ``make_kfac_ready``, as TAK uses it).
    """
    if name == "lin_proj.weight":
        return f"{projection}.weight"
    for pattern, replacement in _RENAMES:
        if pattern.match(name):
            return prefix + pattern.sub(replacement, name)
    return None


def mammoth_file_paths(folder: str | os.PathLike[str], dataset_name: str, task_id: int) -> dict[str, Path]:
    """suffix -> path of the five files Mammoth's ``store_kfac`` writes for 0-based ``task_id``."""
    if str(folder).startswith(REMOTE_PREFIXES):
        raise ValueError(
            f"Mammoth factor folder {str(folder)!r} is remote; only local folders are supported offline: "
            "download the files into a local folder and pass its path"
        )
    base = f"{dataset_name}_task_{task_id}"
    return {suffix: Path(folder) / f"{base}_{suffix}.pt" for suffix in MAMMOTH_SUFFIXES}


def mammoth_tasks(folder: str | os.PathLike[str]) -> dict[str, list[int]]:
    """dataset name -> the 0-based task ids with all five Mammoth factor files in ``folder``."""
    found: dict[str, set[int]] = {}
    for entry in Path(folder).iterdir():
        match = _MAMMOTH_FILE.match(entry.name)
        if match:
            found.setdefault(match["dataset"], set()).add(int(match["task"]))
    return {
        dataset: sorted(
            t for t in tasks if all(p.is_file() for p in mammoth_file_paths(folder, dataset, t).values())
        )
        for dataset, tasks in sorted(found.items())
    }


def load_mammoth_factors(
    folder: str | os.PathLike[str],
    dataset_name: str,
    task_id: int,
    *,
    name_map: Callable[[str], str | None] = mammoth_to_clcore_name,
    model: nn.Module | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
) -> KFACFactors:
    """Task ``task_id``'s factors (0-based, as Mammoth numbers them) from Mammoth's files, as ``KFACFactors``.

    Args:
        folder: Mammoth's ``--fisher_cache`` folder (local).
        dataset_name: the prefix of the files, Mammoth's ``dataset.NAME`` (e.g. ``"seq-cars"``).
        task_id: Mammoth's 0-based task index (clcore's task ``task_id + 1``).
        name_map: Mammoth parameter name -> clcore parameter name, or None if it has none.
        model: if given, every factor is checked against the shape of the parameter it maps to.
        dtype: convert the factors (Mammoth stores them in its ``--fp_precision``).
        strict: raise on a Mammoth key ``name_map`` cannot translate; otherwise skip it (logged).

    Returns:
        ``KFACFactors`` with ``A = aaT / num_aaT``, ``B = ggT / num_ggT``, each layer-norm / class
        token Gram matrix ``ffT / num_ggT`` as a one-parameter Gram group named by its parameter
        (as ``parameters.select_parameters`` names them), and ``num_samples = N``.
    """
    paths = mammoth_file_paths(folder, dataset_name, task_id)
    if missing := [str(path) for path in paths.values() if not path.is_file()]:
        raise FileNotFoundError(
            f"Mammoth KFAC files for {dataset_name!r} task {task_id} not found: {missing}"
        )
    content = {suffix: load_tensors_safely(path, "Mammoth KFAC file") for suffix, path in paths.items()}
    num_aat, num_ggt = (_count(content[suffix], paths[suffix]) for suffix in ("num_aaT", "num_ggT"))
    if num_aat != num_ggt or num_ggt <= 0:
        raise ValueError(
            f"Mammoth KFAC files for {dataset_name!r} task {task_id}: the input and gradient factors "
            f"summed {num_aat} and {num_ggt} examples; Mammoth requires them equal and positive"
        )
    aat, ggt, fft = (_tensor_dict(content[suffix], paths[suffix]) for suffix in ("aaT", "ggT", "ffT"))
    if aat.keys() != ggt.keys():
        raise ValueError(
            f"{paths['aaT']} and {paths['ggT']} factor different layers: {sorted(aat.keys() ^ ggt.keys())}"
        )

    unmapped: list[str] = []
    kronecker: dict[str, tuple[Tensor, Tensor]] = {}
    for key in aat:
        target = name_map(key)
        if target is None or not key.endswith(".weight") or not target.endswith(".weight"):
            unmapped.append(key)
            continue
        kronecker[target.removesuffix(".weight")] = (aat[key] / num_aat, ggt[key] / num_ggt)
    gram: dict[str, Tensor] = {}
    for key, matrix in fft.items():
        target = name_map(key)
        if target is None:
            unmapped.append(key)
            continue
        gram[target] = matrix / num_ggt
    if unmapped:
        message = (
            f"Mammoth KFAC files for {dataset_name!r} task {task_id}: no clcore parameter for {sorted(unmapped)} "
            "(pass name_map for a tower other than Mammoth's CLIP ViT)"
        )
        if strict:
            raise ValueError(message)
        log.warning("%s; skipped", message)

    factors = KFACFactors(kronecker, gram, {name: (name,) for name in gram}, num_ggt)
    _check_square(factors, paths)
    if model is not None:
        check_factors_fit(factors, model)
    return factors if dtype is None else factors.to(dtype=dtype)


def check_factors_fit(factors: KFACFactors, model: nn.Module) -> None:
    """Raise ``ValueError`` unless every factor has the size of the ``model`` parameter it covers."""
    params = dict(model.named_parameters())
    problems = []
    for layer, (input_factor, output_factor) in factors.kronecker.items():
        weight = params.get(f"{layer}.weight")
        if weight is None or weight.ndim != 2:
            problems.append(f"{layer}: no matrix weight {layer}.weight in the model")
            continue
        out_dim, in_dim = weight.shape
        if output_factor.shape[0] != out_dim or input_factor.shape[0] not in (in_dim, in_dim + 1):
            problems.append(
                f"{layer}: A {tuple(input_factor.shape)}, B {tuple(output_factor.shape)} do not fit "
                f"the weight {tuple(weight.shape)}"
            )
    for group, matrix in factors.gram.items():
        size = sum(params[name].numel() for name in factors.gram_params[group] if name in params)
        if any(name not in params for name in factors.gram_params[group]) or matrix.shape[0] != size:
            problems.append(f"{group}: Gram matrix {tuple(matrix.shape)} does not fit the model's parameter")
    if problems:
        raise ValueError("KFAC factors do not fit the model: " + "; ".join(problems))


def _count(content: Any, path: Path) -> int:
    if not isinstance(content, Tensor) or content.numel() != 1:
        raise ValueError(f"{path} should hold torch.tensor([N]), a one-element tensor")
    return int(content.item())


def _tensor_dict(content: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(content, Mapping) or not all(
        isinstance(key, str) and isinstance(value, Tensor) for key, value in content.items()
    ):
        raise ValueError(f"{path} should hold a dict of parameter name -> tensor, as Mammoth saves it")
    return dict(content)


def _check_square(factors: KFACFactors, paths: Mapping[str, Path]) -> None:
    matrices = [(f"{layer} A", a) for layer, (a, _) in factors.kronecker.items()]
    matrices += [(f"{layer} B", b) for layer, (_, b) in factors.kronecker.items()]
    matrices += [(f"{group} Gram", g) for group, g in factors.gram.items()]
    for what, matrix in matrices:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(
                f"Mammoth KFAC files {paths['aaT'].parent}: {what} has shape {tuple(matrix.shape)}, not square"
            )
