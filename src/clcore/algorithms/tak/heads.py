"""Frozen class weights for TAK's heads: CLIP's zero-shot text head, or a saved linear classifier.

Porrello et al. (ICLR 2026) fine-tune only the image tower and classify with CLIP's frozen
zero-shot head (Radford et al., ICML 2021, Sec. 3.1.4): class c's weight is the normalised mean of
the normalised text embeddings of its prompts, logits = 100 * cos(image, class) (the reference's
scale). TAK writes such weights into the paradigm's head for each task (``HeadsTIL`` head t,
``HeadsCIL`` block t, ``HeadDIL``'s shared head) and freezes it, so every paradigm keeps its own
meaning of the logits while the head stays the zero-shot one.

A backbone without a text tower (the CPU study's MLP) can get the same treatment from a linear
classifier saved at pre-training time (``SavedClassifier``), matched by class name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from clcore.heads.base import CLHeads
from clcore.heads.cil import HeadsCIL
from clcore.heads.dil import HeadDIL
from clcore.heads.til import HeadsTIL
from clcore.heads.zero_shot_head import build_zero_shot_weights
from clcore.utils.safe_load import load_tensors_safely


def task_head(heads: CLHeads, task_id: int) -> nn.Linear:
    """The linear layer holding task ``task_id``'s classes, whatever the paradigm."""
    if isinstance(heads, HeadsTIL):
        return heads.heads[task_id]
    if isinstance(heads, HeadsCIL):
        return heads.blocks[task_id]
    if isinstance(heads, HeadDIL):
        return heads.head
    raise TypeError(f"TAK knows the heads HeadsTIL, HeadsCIL and HeadDIL, not {type(heads).__name__}")


class CLIPTextClassWeights:
    """Zero-shot class weights from an open_clip CLIP text tower, prompt-ensembled over ``templates``.

    The CLIP model is loaded on first use (``load_open_clip``: a pre-trained tag, a checkpoint file,
    or ``pretrained=None`` with ``model_cfg`` for a random test model, built from a fixed seed so the
    weights do not depend on when they are first asked for). Embeddings are kept per class name;
    ``release()`` drops the model once every name a run needs has been embedded.

    Returns ``(logit_scale * weights, zeros)`` for ``class_names``: the bias of a linear head.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | None,
        templates: Sequence[str] = ("a photo of a {}.",),
        model_cfg: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
        quick_gelu: bool | None = None,
        logit_scale: float = 100.0,
    ) -> None:
        if not templates or any("{}" not in template for template in templates):
            raise ValueError(
                f"zero-shot templates must each contain '{{}}' for the class name, got {list(templates)}"
            )
        self.model_name, self.pretrained = model_name, pretrained
        self.model_cfg, self.cache_dir, self.quick_gelu = model_cfg, cache_dir, quick_gelu
        self.templates = [str(template) for template in templates]
        self.logit_scale = float(logit_scale)
        self._embeddings: dict[str, Tensor] = {}
        self._model: nn.Module | None = None
        self._tokenizer = None

    def __call__(self, class_names: Sequence[str]) -> tuple[Tensor, Tensor]:
        missing = [name for name in dict.fromkeys(class_names) if name not in self._embeddings]
        if missing:
            self._load()
            weights = build_zero_shot_weights(self._model, self._tokenizer, missing, self.templates)
            self._embeddings.update({name: weights[i].cpu() for i, name in enumerate(missing)})
        weights = torch.stack([self._embeddings[name] for name in class_names])
        return self.logit_scale * weights, torch.zeros(len(class_names))

    def release(self) -> None:
        self._model = self._tokenizer = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from clcore.backbones.clip import load_open_clip

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, self._tokenizer = load_open_clip(
                self.model_name, self.pretrained, self.model_cfg, self.cache_dir, quick_gelu=self.quick_gelu
            )
        self._model = model.eval()


class SavedClassifier:
    """Rows of a linear classifier saved as ``{"weight": [C, D], "bias": [C], "class_names": [C names]}``.

    For backbones without a text tower: the classifier trained on top of theta_0 at pre-training
    time plays the zero-shot head (the CPU study's MLP). Loaded with ``weights_only=True``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"saved classifier {path} not found (the CPU study writes it: python experiments/tak_small/pretrain.py)"
            )
        saved = load_tensors_safely(path, "saved classifier")
        if not isinstance(saved, dict) or not {"weight", "bias", "class_names"} <= set(saved):
            raise ValueError(f"{path} is not a saved classifier with weight, bias and class_names")
        self.rows = {name: index for index, name in enumerate(saved["class_names"])}
        self.weight, self.bias = saved["weight"].float(), saved["bias"].float()

    def __call__(self, class_names: Sequence[str]) -> tuple[Tensor, Tensor]:
        unknown = [name for name in class_names if name not in self.rows]
        if unknown:
            raise KeyError(f"the saved classifier has no class(es) {unknown}; it knows {sorted(self.rows)}")
        index = torch.tensor([self.rows[name] for name in class_names])
        return self.weight[index], self.bias[index]

    def release(self) -> None:
        """Nothing to free: the classifier is small."""


@torch.no_grad()
def write_frozen_head(head: nn.Linear, weight: Tensor, bias: Tensor) -> None:
    """Copy ``weight`` / ``bias`` into ``head`` and freeze it."""
    if head.weight.shape != weight.shape:
        raise ValueError(
            f"class weights {tuple(weight.shape)} do not fit the head {tuple(head.weight.shape)}"
        )
    head.weight.copy_(weight)
    if head.bias is not None:
        head.bias.copy_(bias)
    head.requires_grad_(False)
