"""Zero-shot classification head built from CLIP text embeddings.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021,
Sec. 3.1.4 (prompt ensembling): a class's weight is the mean of its L2-normalised text embeddings
over prompt templates ("a photo of a {}."), re-normalised; logits = scale * cos(image, class).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Template = str | Callable[[str], str]


@torch.no_grad()
def build_zero_shot_weights(
    model: nn.Module,
    tokenizer: Callable[[list[str]], Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    batch_size: int = 256,
) -> Tensor:
    """Class weights [num_classes, embed_dim] from ``model.encode_text`` (any open_clip CLIP model).

    ``templates`` are format strings with one ``{}`` or callables ``classname -> prompt``. Texts go
    through the text tower ``batch_size`` at a time, on the model's device.
    """
    if not classnames or not templates:
        raise ValueError("zero-shot weights need at least one class name and one template")
    prompts = [
        template(name) if callable(template) else template.format(name)
        for name in classnames
        for template in templates
    ]
    device = next(model.parameters()).device
    tokens = tokenizer(prompts).to(device)
    embeddings = torch.cat([model.encode_text(chunk) for chunk in tokens.split(batch_size)])
    # [C * K, D] -> [C, K, D]: normalise each prompt, average a class's prompts, normalise again.
    per_prompt = F.normalize(embeddings.float(), dim=-1).view(len(classnames), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


class ZeroShotHead(nn.Module):
    """Frozen linear head: logits = logit_scale * normalize(features) @ weights^T.

    ``weights`` [num_classes, embed_dim] from ``build_zero_shot_weights``; ``logit_scale`` is the
    multiplicative scale (CLIP's ``logit_scale.exp()``, 100 for the OpenAI models). Both are
    buffers: they move with the module and load from checkpoints, but no optimiser sees them.
    """

    def __init__(
        self, weights: Tensor, logit_scale: float | Tensor = 100.0, normalize_input: bool = True
    ) -> None:
        super().__init__()
        if weights.dim() != 2:
            raise ValueError(
                f"zero-shot weights must be [num_classes, embed_dim], got {tuple(weights.shape)}"
            )
        self.register_buffer("weight", weights.detach().clone())
        self.register_buffer(
            "logit_scale", torch.as_tensor(logit_scale, dtype=weights.dtype).detach().clone()
        )
        self.normalize_input = normalize_input

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def input_dim(self) -> int:
        return self.weight.shape[1]

    def forward(self, features: Tensor) -> Tensor:
        if self.normalize_input:
            features = F.normalize(features, dim=-1)
        return self.logit_scale * features @ self.weight.to(features.dtype).T
