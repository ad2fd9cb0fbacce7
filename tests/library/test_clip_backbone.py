"""CLIP backbone on a tiny random open_clip ViT: features, explicit attention, linearisation, zero-shot head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("open_clip")

from clcore.backbones.clip import (  # noqa: E402
    CLIPVisualBackbone,
    ExplicitMultiheadAttention,
    PretrainedWeightsUnavailableError,
    load_open_clip,
    register_open_clip_config,
    use_explicit_attention,
)
from clcore.heads.zero_shot_head import ZeroShotHead, build_zero_shot_weights  # noqa: E402
from clcore.task_arithmetic import LinearizedModel  # noqa: E402

TINY_NAME = "clcore-test-tiny-vit"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},  # 2 heads
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return load_open_clip(TINY_NAME, pretrained=None, model_cfg=TINY_CFG)


def test_tiny_vit_features(tiny_clip):
    clip, _ = tiny_clip
    backbone = CLIPVisualBackbone(clip_model=clip)
    assert backbone.output_dim == 32
    features = backbone(torch.randn(3, 3, 32, 32))
    assert features.shape == (3, 32)
    normalized = CLIPVisualBackbone(clip_model=clip, normalize_features=True)(torch.randn(3, 3, 32, 32))
    torch.testing.assert_close(normalized.norm(dim=-1), torch.ones(3))
    # built by name from the registered config, as a Hydra config would
    assert CLIPVisualBackbone(TINY_NAME, pretrained=None, model_cfg=TINY_CFG).output_dim == 32


def test_explicit_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    for batch_first in (True, False):
        fused = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        explicit = ExplicitMultiheadAttention(fused)
        x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
        causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
        padding = torch.tensor([[False] * 4 + [True], [False] * 5])
        for kwargs in (
            {},
            {"attn_mask": causal},
            {"attn_mask": torch.randn(5, 5)},
            {"key_padding_mask": padding},
        ):
            out_fused, weights_fused = fused(x, x, x, **kwargs)
            out_explicit, weights_explicit = explicit(x, x, x, **kwargs)
            torch.testing.assert_close(out_explicit, out_fused, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(weights_explicit, weights_fused, atol=1e-5, rtol=1e-5)
    cross = nn.MultiheadAttention(16, 2, kdim=8, vdim=8, batch_first=True)
    query, context = torch.randn(2, 3, 16), torch.randn(2, 7, 8)
    torch.testing.assert_close(
        ExplicitMultiheadAttention(cross)(query, context, context)[0],
        cross(query, context, context)[0],
        atol=1e-5,
        rtol=1e-5,
    )


def test_qkv_linear_attention_matches_torch_multihead_attention_with_masks():
    from clcore.algorithms.tak.clip_kfac_ready import QKVLinearAttention

    torch.manual_seed(0)
    for batch_first in (True, False):
        fused = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        qkv = QKVLinearAttention(fused)
        assert isinstance(qkv.in_proj, nn.Linear) and qkv.in_proj.weight is fused.in_proj_weight
        x = torch.randn(2, 5, 16) if batch_first else torch.randn(5, 2, 16)
        causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
        for kwargs in ({}, {"attn_mask": causal}, {"attn_mask": torch.randn(5, 5)}):
            out, weights = qkv(x, x, x, **kwargs)
            torch.testing.assert_close(out, fused(x, x, x, **kwargs)[0], atol=1e-5, rtol=1e-5)
            assert weights is None


def test_explicit_attention_switch_keeps_weights_and_outputs():
    # a model of its own: the switch edits the model in place
    clip, _ = load_open_clip(TINY_NAME, pretrained=None, model_cfg=TINY_CFG)
    fused = CLIPVisualBackbone(clip_model=clip).eval()
    x = torch.randn(2, 3, 32, 32)
    reference = fused(x)
    keys = set(fused.state_dict())
    explicit = use_explicit_attention(fused)  # in place, same parameters
    assert isinstance(explicit.visual.transformer.resblocks[0].attn, ExplicitMultiheadAttention)
    assert set(explicit.state_dict()) == keys
    torch.testing.assert_close(explicit(x), reference, atol=1e-5, rtol=1e-5)
    # jvp through the encoder works with the explicit attention
    params = dict(explicit.named_parameters())
    tangents = {name: torch.randn_like(p) for name, p in params.items()}
    _, jvp_out = torch.func.jvp(
        lambda p: torch.func.functional_call(explicit, p, (x,)), (params,), (tangents,)
    )
    assert jvp_out.shape == reference.shape and torch.isfinite(jvp_out).all()


def test_linearized_clip_fine_tunes_with_zero_shot_head():
    torch.manual_seed(0)
    clip, tokenizer = load_open_clip(TINY_NAME, pretrained=None, model_cfg=TINY_CFG)
    backbone = CLIPVisualBackbone(clip_model=clip, explicit_attention=True)
    classnames = ["cat", "dog", "car", "tree"]
    head = ZeroShotHead(
        build_zero_shot_weights(clip, tokenizer, classnames, ["a photo of a {}."]), logit_scale=10.0
    )
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    linear = LinearizedModel(backbone)
    torch.testing.assert_close(linear(x), backbone(x), atol=1e-5, rtol=1e-5)
    theta_0 = {name: t.clone() for name, t in linear.theta_0().items()}
    optimizer = torch.optim.AdamW(linear.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(head(linear(x)), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(t, theta_0[name]) for name, t in linear.theta_0().items())
    assert not any(p.requires_grad for p in head.parameters())


def test_zero_shot_weights_average_normalised_prompts(tiny_clip):
    clip, tokenizer = tiny_clip
    templates = ["a photo of a {}.", lambda name: f"art of the {name}"]
    weights = build_zero_shot_weights(clip, tokenizer, ["cat", "dog", "car"], templates)
    assert weights.shape == (3, 32)
    with torch.no_grad():
        prompts = F.normalize(clip.encode_text(tokenizer(["a photo of a dog.", "art of the dog"])), dim=-1)
    torch.testing.assert_close(weights[1], F.normalize(prompts.mean(0), dim=0))
    head = ZeroShotHead(weights, logit_scale=clip.logit_scale.exp())
    features = torch.randn(5, 32)
    logits = head(features)
    assert logits.shape == (5, 3) and head.num_classes == 3
    torch.testing.assert_close(logits, clip.logit_scale.exp() * F.normalize(features, dim=-1) @ weights.T)


def test_offline_pretrained_tag_fails_with_instructions(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time otherwise
    with pytest.raises(PretrainedWeightsUnavailableError) as error:
        CLIPVisualBackbone("ViT-B-32", pretrained="openai", cache_dir=str(tmp_path))
    message = str(error.value)
    assert "'ViT-B-32'" in message and "'openai'" in message and str(tmp_path) in message
    assert "huggingface.co/timm/vit_base_patch32_clip_224.openai" in message
    assert "pretrained=/path/to/checkpoint" in message


def test_unknown_tag_and_config_clash_are_clear():
    with pytest.raises(ValueError, match="tags:"):
        load_open_clip("ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(ValueError, match="different model config"):
        register_open_clip_config("ViT-B-32", TINY_CFG)
