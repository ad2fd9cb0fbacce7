"""CLIP visual encoder (open_clip) as a CL backbone, with an attention that forward-mode AD can differentiate.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021;
weights and architectures from open_clip (Cherti et al., CVPR 2023).

Linearised fine-tuning (Ortiz-Jimenez et al., NeurIPS 2023) needs ``torch.func.jvp`` through the
encoder. The fused attention kernels ``nn.MultiheadAttention`` dispatches to (``_native_multi_head_attention``
in eval mode, ``scaled_dot_product_attention``'s flash / memory-efficient kernels in train mode)
have no forward-mode derivative, so ``use_explicit_attention`` swaps in softmax(Q K^T / sqrt(d)) V
written with plain tensor ops, on the *same* parameters under the same state-dict names.

open_clip is imported lazily: importing it costs seconds, and the CLI should not pay that unless a
CLIP model is built.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clcore.backbones.base import CLBackbone


class PretrainedWeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable (typically: offline)."""


# -- explicit attention -----------------------------------------------------------------------
def additive_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """An attention mask as scores to add, with ``nn.MultiheadAttention``'s semantics.

    Boolean masks: True = may not attend (-inf); float masks are added as they are.
    """
    if mask is None or mask.is_floating_point():
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


class ExplicitMultiheadAttention(nn.Module):
    """Drop-in for an ``nn.MultiheadAttention``, on its parameters, with no fused kernel.

    Vaswani et al., "Attention Is All You Need", NeurIPS 2017, Eq. 1 per head:
    softmax(Q K^T / sqrt(d_head) + mask) V, heads concatenated and projected by ``out_proj``.
    Same call signature and same parameter names (``in_proj_weight``, ``in_proj_bias``,
    ``out_proj.*``, or ``q/k/v_proj_weight`` when key/value dims differ), so checkpoints load either way.
    """

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        if attention.bias_k is not None or attention.add_zero_attn:
            raise ValueError("explicit attention does not implement add_bias_kv / add_zero_attn")
        self.embed_dim = attention.embed_dim
        self.num_heads = attention.num_heads
        self.head_dim = attention.head_dim
        self.dropout = attention.dropout
        self.batch_first = attention.batch_first
        self.same_embed_dim = attention._qkv_same_embed_dim
        # Re-registering the very Parameter objects: no copy, optimisers and task vectors see one tensor.
        if self.same_embed_dim:
            self.in_proj_weight = attention.in_proj_weight
        else:
            self.q_proj_weight = attention.q_proj_weight
            self.k_proj_weight = attention.k_proj_weight
            self.v_proj_weight = attention.v_proj_weight
        self.in_proj_bias = attention.in_proj_bias
        self.out_proj = attention.out_proj

    def _projections(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        if self.same_embed_dim:
            if query is key and key is value:  # self-attention: one matmul for Q, K and V
                return F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
            weights = self.in_proj_weight.chunk(3)
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        return tuple(F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases))

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = (x.unsqueeze(1 if not self.batch_first else 0) for x in (query, key, value))
        if not self.batch_first:  # [L, N, E] -> [N, L, E]
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        q, k, v = self._projections(query, key, value)
        batch, target_len, source_len = q.shape[0], q.shape[1], k.shape[1]
        # [N, L, E] -> [N, H, L, d]
        q, k, v = (x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2) for x in (q, k, v))

        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        mask = additive_mask(attn_mask, scores.dtype)
        if mask is None and is_causal:
            mask = torch.full(
                (target_len, source_len), float("-inf"), device=q.device, dtype=scores.dtype
            ).triu(1)
        if mask is not None:
            scores = scores + (
                mask.view(batch, self.num_heads, target_len, source_len) if mask.dim() == 3 else mask
            )
        padding = additive_mask(key_padding_mask, scores.dtype)
        if padding is not None:
            scores = scores + padding.view(batch, 1, 1, source_len)
        weights = scores.softmax(dim=-1)
        weights_dropped = F.dropout(weights, p=self.dropout, training=self.training)

        out = (weights_dropped @ v).transpose(1, 2).flatten(2)  # [N, L, E]
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1 if not self.batch_first else 0)
        if not need_weights:
            return out, None
        weights = weights.mean(dim=1) if average_attn_weights else weights
        return out, (weights if batched else weights.squeeze(0))


def use_explicit_attention(module: nn.Module) -> nn.Module:
    """Make every attention in ``module`` differentiable in forward mode (``torch.func.jvp``); in place.

    ``nn.MultiheadAttention`` layers become ``ExplicitMultiheadAttention`` on the same parameters;
    open_clip's own ``Attention`` (custom blocks) has an explicit path already and is switched to it.
    Outputs are unchanged up to float rounding. Returns ``module``.
    """
    for parent in list(module.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, child_name, ExplicitMultiheadAttention(child))
            elif hasattr(child, "use_fsdpa"):  # open_clip.transformer.Attention
                child.use_fsdpa = False
    return module


# -- open_clip models -------------------------------------------------------------------------
def register_open_clip_config(name: str, config: Mapping[str, Any]) -> None:
    """Make ``name`` a model open_clip can build (``create_model``, ``get_tokenizer``).

    ``config`` is an open_clip model config: ``embed_dim``, ``vision_cfg``, ``text_cfg`` (as in
    open_clip's ``model_configs/*.json``). Goes through open_clip's public ``add_model_config``:
    registering the same config twice is a no-op; reusing a name for another config is an error.
    """
    import open_clip

    if hasattr(config, "_metadata"):  # an OmegaConf node from Hydra
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(config, resolve=True)
    config = json.loads(json.dumps(dict(config)))  # plain JSON types, as open_clip stores them
    missing = {"embed_dim", "vision_cfg", "text_cfg"} - config.keys()
    if missing:
        raise ValueError(f"open_clip model config {name!r} lacks {sorted(missing)}")
    if "/" in name:
        raise ValueError(f"model config name may not contain '/': {name!r}")
    existing = open_clip.get_model_config(name)
    if existing is not None:
        if existing == config:
            return
        raise ValueError(
            f"open_clip already has a different model config named {name!r}; choose another name"
        )
    # open_clip reads configs from JSON files; it copies them into its registry when added,
    # so the file can go right after.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(config))
        open_clip.add_model_config(path)


def _unavailable_message(
    model_name: str, pretrained: str, pretrained_cfg: dict, cache_dir: str | None, error: Exception
) -> str:
    if pretrained_cfg.get("hf_hub"):
        # open_clip's convention: "org/repo/" (default file name) or "org/repo/file".
        repo, filename = os.path.split(pretrained_cfg["hf_hub"])
        source = f"https://huggingface.co/{repo} (file {filename or 'open_clip_pytorch_model.bin or open_clip_model.safetensors'})"
        default_cache = os.path.join(
            os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
        )
    else:
        source = pretrained_cfg.get("url", "?")
        default_cache = os.path.expanduser("~/.cache/clip")
    where = cache_dir or default_cache
    return (
        f"Pretrained weights for open_clip model {model_name!r} with tag {pretrained!r} are not in the cache "
        f"({where}) and could not be downloaded (offline?).\n"
        f"  Cause: {type(error).__name__}: {error}\n"
        "  Fix, either:\n"
        "  1. on a machine with internet, run\n"
        f"       python -c \"import open_clip; open_clip.create_model('{model_name}', pretrained='{pretrained}', "
        f"cache_dir='{where}')\"\n"
        f"     and copy {where} to the same path here (or pass cache_dir=<that folder>); set HF_HUB_OFFLINE=1 "
        "to use the cache without network checks; or\n"
        f"  2. download the checkpoint from {source} and pass its path: pretrained=/path/to/checkpoint."
    )


def load_open_clip(
    model_name: str = "ViT-B-32",
    pretrained: str | None = "openai",
    model_cfg: Mapping[str, Any] | None = None,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
    quick_gelu: bool | None = None,
) -> tuple[nn.Module, Any]:
    """An open_clip CLIP model and its tokenizer.

    - ``model_name``: a built-in architecture ("ViT-B-32", "ViT-B-16", "ViT-L-14", ...) or, with
      ``model_cfg``, the name to register that custom config under (tiny test models).
    - ``pretrained``: a tag ("openai", "laion2b_s34b_b79k", ...), a checkpoint file, or None for
      random weights. A tag that is neither cached nor downloadable raises
      ``PretrainedWeightsUnavailableError`` saying what to download and where to put it.
    - ``quick_gelu``: None takes the activation the tag's weights were trained with (the OpenAI
      weights use QuickGELU, which open_clip only warns about when the architecture name lacks
      "-quickgelu").
    """
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    if model_cfg is not None:
        register_open_clip_config(model_name, model_cfg)
    elif open_clip.get_model_config(model_name) is None:
        raise ValueError(f"unknown open_clip model {model_name!r}; built-ins: {open_clip.list_models()}")

    pretrained_cfg: dict = {}
    looks_like_path = pretrained is not None and (
        os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
    )
    if looks_like_path and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"pretrained checkpoint file not found: {pretrained}")
    if pretrained is not None and not os.path.isfile(pretrained):
        pretrained_cfg = get_pretrained_cfg(model_name, pretrained)
        if not pretrained_cfg:
            raise ValueError(
                f"pretrained={pretrained!r} is neither a checkpoint file nor a tag of {model_name!r}; "
                f"tags: {open_clip.list_pretrained_tags_by_model(model_name)}"
            )
        try:
            with _offline_when_unreachable():
                download_pretrained(pretrained_cfg, cache_dir=cache_dir)  # a cache hit when present
        except Exception as error:  # open_clip / huggingface_hub / urllib each raise their own kind
            raise PretrainedWeightsUnavailableError(
                _unavailable_message(model_name, pretrained, pretrained_cfg, cache_dir, error)
            ) from error
    if quick_gelu is None:
        quick_gelu = bool(pretrained_cfg.get("quick_gelu", False))
    model = open_clip.create_model(
        model_name, pretrained=pretrained, cache_dir=cache_dir, device=device, force_quick_gelu=quick_gelu
    )
    return model, open_clip.get_tokenizer(model_name)


@contextlib.contextmanager
def _offline_when_unreachable(host: str = "huggingface.co"):
    """Within the block, huggingface_hub answers from its cache alone when ``host`` does not
    resolve: offline, its downloads would otherwise retry with back-off for about a minute before
    failing. A cached file is found either way; a missing one fails at once."""
    try:
        socket.getaddrinfo(host, 443)
        reachable = True
    except OSError:
        reachable = False
    try:
        from huggingface_hub import constants
    except ImportError:  # open_clip then downloads from URLs, without retries
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or not reachable
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


class CLIPVisualBackbone(CLBackbone):
    """The image tower of an open_clip CLIP model: images [N, 3, H, W] -> features [N, embed_dim].

    ``output_dim`` is CLIP's joint embedding size (the text embeddings a zero-shot head holds have
    the same size). Features are L2-normalised when ``normalize_features`` (the zero-shot head
    normalises its input anyway). ``explicit_attention=True`` makes the encoder differentiable with
    ``torch.func.jvp`` (needed by ``LinearizedModel``). Pass ``clip_model`` to wrap an already built
    model (e.g. the one whose text tower built the zero-shot head) instead of loading one.
    Images must be preprocessed as ``preprocess_cfg`` says (size, mean, std).
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | None = "openai",
        model_cfg: Mapping[str, Any] | None = None,
        cache_dir: str | None = None,
        normalize_features: bool = False,
        explicit_attention: bool = False,
        quick_gelu: bool | None = None,
        clip_model: nn.Module | None = None,
    ) -> None:
        if clip_model is None:
            clip_model, _ = load_open_clip(
                model_name, pretrained, model_cfg, cache_dir, quick_gelu=quick_gelu
            )
        visual = clip_model.visual
        super().__init__(int(visual.output_dim))
        self.visual = visual
        self.normalize_features = normalize_features
        self.preprocess_cfg = dict(getattr(visual, "preprocess_cfg", {}))
        if explicit_attention:
            use_explicit_attention(self.visual)

    def forward(self, x: Tensor) -> Tensor:
        features = self.visual(x)
        return F.normalize(features, dim=-1) if self.normalize_features else features
