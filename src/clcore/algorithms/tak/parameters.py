"""Which backbone parameters TAK fine-tunes, and how the penalty covers each of them.

Porrello et al. (ICLR 2026, arXiv 2602.17385) fine-tune chosen parameter kinds of the CLIP image
tower (their ``--ft_*`` flags) and regularise each kind with the curvature that suits it:

===================== ============================================ ===================================
kind (flag ft_<kind>) what it is                                   penalty term
===================== ============================================ ===================================
linears               MLP ``nn.Linear`` layers (any other Linear)  KFAC  tr(B dW A dW^T), scale 1
attention             Q/K/V projection ``in_proj``, ``out_proj``    KFAC, scale 1
projection            the output projection (``projection``)       KFAC, scale ``fisher_ft_proj_scaler``
layer_norms           ``nn.LayerNorm`` weight, bias                 Gram per parameter, ``fisher_norm_scaler``
class_embedding       the class token                              Gram, ``fisher_norm_scaler``
positional_embedding  the positional embedding                     none (as the reference)
conv_stem             ``nn.Conv2d`` layers (the patch embedding)   none (as the reference)
===================== ============================================ ===================================

Kinds are recognised by module type, so the same flags select parameters of a non-CLIP backbone
(an MLP: every ``nn.Linear`` is "linears"). With LoRA, the 2-D weights of the three KFAC kinds are
low-rank (rank ``lora_rank``, attention ``lora_rank_attention``, as the reference's 16 and 48);
every other entry stays a full tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from clcore.algorithms.tak.clip_kfac_ready import LinearProjectionVisual, QKVLinearAttention

KINDS = (
    "linears",
    "attention",
    "layer_norms",
    "class_embedding",
    "projection",
    "positional_embedding",
    "conv_stem",
)
KFAC_KINDS = ("linears", "attention", "projection")
GRAM_KINDS = ("layer_norms", "class_embedding")


@dataclass
class TAKParameters:
    """The fine-tuned parameters of one backbone, by name (names as in ``backbone.named_parameters()``).

    Attributes:
        shapes: every fine-tuned parameter -> its shape (the entries of a task vector).
        kinds: every fine-tuned parameter -> its kind (``KINDS``).
        kfac_params: the weights / biases of the factored ``nn.Linear`` layers.
        gram_groups: group name -> parameter names with a full Gram matrix (one parameter each).
        scalers: KFAC layer (module name) or Gram group -> multiplier of its penalty term.
        lora_ranks: the entries trained as low-rank products, and their rank.
    """

    shapes: dict[str, torch.Size] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    kfac_params: list[str] = field(default_factory=list)
    gram_groups: dict[str, list[str]] = field(default_factory=dict)
    scalers: dict[str, float] = field(default_factory=dict)
    lora_ranks: dict[str, int] = field(default_factory=dict)

    @property
    def unpenalised(self) -> list[str]:
        return [name for name, kind in self.kinds.items() if kind not in KFAC_KINDS + GRAM_KINDS]


def parameter_kind(parent: nn.Module | None, module: nn.Module, parameter_name: str) -> str | None:
    """The kind of parameter ``parameter_name`` owned directly by ``module`` (child of ``parent``)."""
    if isinstance(module, nn.Linear):
        if isinstance(parent, QKVLinearAttention):
            return "attention"
        if isinstance(parent, LinearProjectionVisual):
            return "projection"
        return "linears"
    if isinstance(module, nn.LayerNorm):
        return "layer_norms"
    if isinstance(module, nn.Conv2d):
        return "conv_stem"
    if parameter_name in ("class_embedding", "positional_embedding"):
        return parameter_name
    return None


def select_parameters(
    backbone: nn.Module,
    fine_tune: Mapping[str, bool],
    *,
    projection_scaler: float,
    norm_scaler: float,
    use_lora: bool = False,
    lora_rank: int = 16,
    lora_rank_attention: int = 48,
) -> TAKParameters:
    """The parameters of ``backbone`` whose kind is switched on in ``fine_tune`` (kind -> bool)."""
    unknown = set(fine_tune) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown parameter kinds {sorted(unknown)}; known: {KINDS}")
    modules = dict(backbone.named_modules())
    selected = TAKParameters()
    for module_name, module in modules.items():
        parent = modules.get(module_name.rpartition(".")[0]) if module_name else None
        for parameter_name, parameter in module.named_parameters(recurse=False):
            kind = parameter_kind(parent, module, parameter_name)
            if kind is None or not fine_tune.get(kind, False):
                continue
            name = f"{module_name}.{parameter_name}" if module_name else parameter_name
            selected.shapes[name] = parameter.shape
            selected.kinds[name] = kind
            if kind in KFAC_KINDS:
                selected.kfac_params.append(name)
                if kind == "projection":
                    selected.scalers[module_name] = projection_scaler
                if use_lora and parameter_name == "weight":
                    selected.lora_ranks[name] = lora_rank_attention if kind == "attention" else lora_rank
            elif kind in GRAM_KINDS:
                selected.gram_groups[name] = [name]
                selected.scalers[name] = norm_scaler
    _check_kfac_layers_have_weights(selected)
    if not selected.shapes:
        switched_on = [kind for kind in KINDS if fine_tune.get(kind, False)]
        raise ValueError(
            f"TAK selects no parameter of {type(backbone).__name__}: the ft_* flags switched on ({switched_on}) "
            f"match none of its parameters; for an MLP set ft_linears=true"
        )
    return selected


def _check_kfac_layers_have_weights(selected: TAKParameters) -> None:
    # A bias without its weight cannot be factored (KFAC's A carries the bias as an extra column).
    weights = {name.rpartition(".")[0] for name in selected.kfac_params if name.endswith("weight")}
    orphans = [
        name
        for name in selected.kfac_params
        if name.endswith("bias") and name.rpartition(".")[0] not in weights
    ]
    if orphans:
        raise ValueError(f"linear biases selected without their weights: {orphans[:3]}")
