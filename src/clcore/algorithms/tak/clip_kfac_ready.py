"""An open_clip image tower whose every matrix weight is an ``nn.Linear``, so KFAC can factor it.

KFAC (``clcore.algorithms.tak.kfac``) hooks ``nn.Linear`` modules. Two matrix weights of
open_clip's ``VisionTransformer`` are used without one:

- the packed Q/K/V projection ``in_proj_weight`` of each attention (``F.linear`` on a raw
  parameter, in ``nn.MultiheadAttention`` and in ``ExplicitMultiheadAttention`` alike);
- the output projection ``proj`` (``pooled @ proj``).

Porrello et al. (ICLR 2026, arXiv 2602.17385) factor both as linear layers (their code rebuilds
CLIP's attention with a ``qkv`` linear and the projection as a ``lin_proj`` linear). Here
``make_kfac_ready`` does the same, in place, without copying weights:

- each attention becomes ``QKVLinearAttention``: softmax(Q K^T / sqrt(d)) V written with plain
  tensor ops (forward-mode AD works through it, as ``torch.func.jvp`` needs), whose Q/K/V
  projection is an ``nn.Linear`` named ``in_proj`` holding the very same Parameter objects;
- the tower becomes ``LinearProjectionVisual``: the tower with ``proj`` removed (``trunk``),
  followed by ``projection``, an ``nn.Linear`` whose weight is proj^T.

The features are unchanged up to float rounding. Parameter names change (``attn.in_proj_weight``
-> ``attn.in_proj.weight``, ``visual.proj`` -> ``visual.projection.weight``, the rest gains
``visual.trunk.``), so do this before taking state dicts that must match each other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clcore.backbones.clip import (
    CLIPVisualBackbone,
    ExplicitMultiheadAttention,
    additive_mask,
    use_explicit_attention,
)


class QKVLinearAttention(nn.Module):
    """Self-attention (Vaswani et al., NeurIPS 2017, Eq. 1) with the packed Q/K/V projection as ``in_proj``.

    Built from an ``nn.MultiheadAttention`` or ``ExplicitMultiheadAttention`` with equal query, key
    and value sizes; shares its parameters. Supports what vision towers use: self-attention with an
    optional additive or boolean ``attn_mask``; the attention weights are never returned.
    """

    def __init__(self, attention: nn.MultiheadAttention | ExplicitMultiheadAttention) -> None:
        super().__init__()
        same_size = getattr(attention, "_qkv_same_embed_dim", getattr(attention, "same_embed_dim", False))
        if (
            not same_size
            or getattr(attention, "bias_k", None) is not None
            or getattr(attention, "add_zero_attn", False)
        ):
            raise ValueError(
                "QKVLinearAttention needs a plain self-attention (one packed in_proj, no bias_k / zero_attn)"
            )
        self.embed_dim = attention.embed_dim
        self.num_heads = attention.num_heads
        self.head_dim = attention.head_dim
        self.dropout = attention.dropout
        self.batch_first = attention.batch_first
        with torch.device("meta"):  # the weights are replaced right away: allocate nothing
            self.in_proj = nn.Linear(
                self.embed_dim, 3 * self.embed_dim, bias=attention.in_proj_bias is not None
            )
        self.in_proj.weight = attention.in_proj_weight
        if attention.in_proj_bias is not None:
            self.in_proj.bias = attention.in_proj_bias
        self.out_proj = attention.out_proj

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
        **_: object,
    ) -> tuple[Tensor, None]:
        if not (query is key and key is value) or key_padding_mask is not None:
            raise ValueError("QKVLinearAttention supports self-attention without key_padding_mask only")
        x = query if self.batch_first else query.transpose(0, 1)  # [N, L, E]
        q, k, v = (
            part.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # [N, H, L, d]
            for part in self.in_proj(x).chunk(3, dim=-1)
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        mask = additive_mask(attn_mask, scores.dtype)
        if mask is not None:
            scores = scores + mask
        weights = F.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        out = self.out_proj((weights @ v).transpose(1, 2).flatten(2))
        return (out if self.batch_first else out.transpose(0, 1)), None


class LinearProjectionVisual(nn.Module):
    """open_clip's ``VisionTransformer`` with its output projection as an ``nn.Linear``: ``projection(trunk(x))``."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        proj = getattr(visual, "proj", None)
        if not isinstance(proj, nn.Parameter) or proj.dim() != 2:
            raise ValueError(
                "expected an open_clip VisionTransformer with a [width, embed_dim] proj parameter"
            )
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "output_tokens", False):
            raise ValueError(
                "attentional pooling / token outputs are not supported by LinearProjectionVisual"
            )
        width, embed_dim = proj.shape
        with torch.device("meta"):
            self.projection = nn.Linear(width, embed_dim, bias=False)
        self.projection.weight = nn.Parameter(proj.detach().T.clone(), requires_grad=proj.requires_grad)
        visual.proj = None  # open_clip skips ``pooled @ proj`` when proj is None
        self.trunk = visual
        self.output_dim = embed_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.projection(self.trunk(x))


def make_kfac_ready(backbone: CLIPVisualBackbone) -> CLIPVisualBackbone:
    """Rebuild ``backbone.visual`` as described in the module docstring; in place, idempotent."""
    if isinstance(backbone.visual, LinearProjectionVisual):
        return backbone
    for parent in list(backbone.visual.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, (nn.MultiheadAttention, ExplicitMultiheadAttention)):
                setattr(parent, child_name, QKVLinearAttention(child))
    use_explicit_attention(backbone.visual)  # any other attention kind (open_clip's custom blocks)
    backbone.visual = LinearProjectionVisual(backbone.visual)
    return backbone
