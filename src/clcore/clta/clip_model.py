"""The pre-trained model of the task-arithmetic papers: a CLIP image encoder with zero-shot heads.

Ilharco et al., ICLR 2023, Sec. 3 / App. B: the image encoder of an open_clip CLIP model is fine-tuned
per task while the task's classification head stays frozen at the zero-shot weights, built from
the text encoder with the task's class names and prompt templates (Radford et al. 2021, Sec. 3.1.4).
Task vectors therefore live in the image encoder only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from clcore.backbones.clip import CLIPVisualBackbone, load_open_clip
from clcore.clta.task_data import TaskData
from clcore.clta.vision_datasets import Preprocess
from clcore.heads.zero_shot_head import ZeroShotHead, build_zero_shot_weights


class CLIPZeroShotModel:
    """``encoder``: the CLIP image tower (theta_0); ``head(task)``: its frozen zero-shot head.

    ``pretrained`` is an open_clip tag ("openai", ...), a checkpoint path, or None for random weights
    (tests). ``explicit_attention`` makes the encoder differentiable in forward mode, which the
    linear and post-hoc modes need (``LinearizedModel``); outputs are unchanged up to rounding.
    ``preprocess`` follows the model's own preprocessing config (open_clip's train / eval transforms).
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = "openai",
        model_cfg: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
        quick_gelu: bool | None = None,
        explicit_attention: bool = True,
    ) -> None:
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        self.model_name, self.pretrained = model_name, pretrained
        self.clip, self.tokenizer = load_open_clip(
            model_name, pretrained, model_cfg, cache_dir, quick_gelu=quick_gelu
        )
        self.encoder = CLIPVisualBackbone(clip_model=self.clip, explicit_attention=explicit_attention)
        preprocess_cfg = PreprocessCfg(**open_clip.get_model_preprocess_cfg(self.clip))
        self.preprocess = Preprocess(
            train=image_transform_v2(preprocess_cfg, is_train=True),
            eval=image_transform_v2(preprocess_cfg, is_train=False),
        )

    def to(self, device: torch.device) -> CLIPZeroShotModel:
        self.clip.to(device)  # the encoder wraps clip.visual: it moves along
        return self

    @torch.no_grad()
    def head(self, task: TaskData) -> nn.Module:
        weights = build_zero_shot_weights(self.clip, self.tokenizer, task.classnames, task.templates)
        return ZeroShotHead(weights, logit_scale=self.clip.logit_scale.exp().item()).requires_grad_(False)

    def release_text_tower(self) -> None:
        """Drop everything but the image encoder once the heads are built (frees the text tower's memory)."""
        self.clip = None
        self.tokenizer = None

    def describe(self) -> dict:
        return {
            "kind": "clip_zero_shot",
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "encoder_parameters": sum(p.numel() for p in self.encoder.parameters()),
        }
