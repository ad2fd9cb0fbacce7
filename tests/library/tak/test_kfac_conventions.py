"""The KFAC conventions of the reference implementation (Mammoth's ``tak``), checked to float64 rounding.

1. Token inputs: KFAC-expand (default) and KFAC-reduce against factors written out by hand.
2. Monte Carlo samples are summed: S samples give the sum of S one-sample factors.
3. On a tiny random open_clip ViT (17 tokens), the factors and per-layer penalties equal an
   independent port of Mammoth's hook-based computation (``models/tak_utils/fisher_kfac.py``,
   ``KFACComputer.compute``; ``models/tak_utils/hooks.py``; ``TAK.begin_task`` / ``penalty_weight`` in
   ``models/tak.py``), and the old convention (KFAC-reduce) is printed as a ratio to it.
4. Mammoth's factor files (``FisherLoader.store_kfac``) read back as clcore factors.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jacrev

from clcore.algorithms.tak.factors import batches_for_factors, samples_for_factors
from clcore.algorithms.tak.kfac import KFACFactors, compute_kfac_factors, monte_carlo_seed
from clcore.algorithms.tak.kfac_penalty import kfac_penalty
from clcore.algorithms.tak.mammoth_files import (
    load_mammoth_factors,
    mammoth_file_paths,
    mammoth_tasks,
    mammoth_to_clcore_name,
)

F64 = torch.float64
TOL = dict(rtol=1e-12, atol=1e-12)


def assert_factors_equal(got: KFACFactors, expected: KFACFactors) -> None:
    assert got.kronecker.keys() == expected.kronecker.keys() and got.gram.keys() == expected.gram.keys()
    for layer, (a, b) in expected.kronecker.items():
        torch.testing.assert_close(got.kronecker[layer][0], a, **TOL)
        torch.testing.assert_close(got.kronecker[layer][1], b, **TOL)
    for group, gram in expected.gram.items():
        torch.testing.assert_close(got.gram[group], gram, **TOL)


# (1) expand and reduce, by hand ---------------------------------------------------------------


class TokenMixer(nn.Module):
    """A linear layer over 3 tokens, then a nonlinear mix of all tokens: each token its own gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.register_buffer("mix", torch.randn(3 * 2, 3))

    def forward(self, x: Tensor) -> Tensor:  # [B, 3, 2] -> [B, 3]
        return torch.tanh(self.linear(x)).flatten(1) @ self.mix


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("num_samples", [0, 2])
def test_expand_and_reduce_match_hand_computed_per_token_factors(normalize: bool, num_samples: int) -> None:
    torch.manual_seed(0)
    model = TokenMixer().to(F64)
    inputs = torch.randn(3, 3, 2, dtype=F64)  # N = 3 examples of L = 3 tokens, d_in = 2
    data = [(inputs[:2],), (inputs[2:],)]  # batches of 2 and 1
    n_examples, n_tokens = inputs.shape[:2]

    # Per example n: a_nl (with the bias's 1) and the per-token output gradients g_nkl = dz_nk / ds_nl.
    def features(s: Tensor) -> Tensor:  # s: the layer output [L, d_out] of one example
        z = torch.tanh(s).flatten() @ model.mix
        return F.normalize(z, dim=-1) if normalize else z

    with torch.no_grad():
        outputs = model.linear(inputs)
    jacobians = [jacrev(features)(outputs[n]) for n in range(n_examples)]  # each [K, L, d_out]
    # The vectors backpropagated per example: one-hot e_k (exact) or the seeded Gaussians, drawn as
    # compute_kfac_factors documents (sample s from monte_carlo_seed(seed, s), batch after batch).
    if num_samples == 0:
        vectors = [torch.eye(3, dtype=F64) for _ in range(n_examples)]
    else:
        generators = [torch.Generator().manual_seed(monte_carlo_seed(7, s)) for s in range(num_samples)]
        per_batch = [
            torch.stack([torch.randn(len(batch), 3, generator=g, dtype=F64) for g in generators], dim=1)
            for (batch,) in data
        ]
        vectors = list(torch.cat(per_batch))  # example -> [S, K]

    a_expand = torch.zeros(3, 3, dtype=F64)
    a_reduce = torch.zeros(3, 3, dtype=F64)
    g_expand = torch.zeros(2, 2, dtype=F64)
    g_reduce = torch.zeros(2, 2, dtype=F64)
    for n in range(n_examples):
        a = [torch.cat([inputs[n, t], torch.ones(1, dtype=F64)]) for t in range(n_tokens)]
        a_bar = sum(a) / n_tokens
        a_reduce += torch.outer(a_bar, a_bar)
        for t in range(n_tokens):
            a_expand += torch.outer(a[t], a[t]) / n_tokens
        for r in vectors[n]:  # summed over the vectors (the Monte Carlo samples), never averaged
            g = [torch.einsum("k,kd->d", r, jacobians[n][:, t]) for t in range(n_tokens)]
            g_bar = sum(g)
            g_reduce += torch.outer(g_bar, g_bar)
            for t in range(n_tokens):
                g_expand += torch.outer(g[t], g[t]) / n_tokens
    hand = {
        "expand": (a_expand / n_examples, g_expand / n_examples),
        "reduce": (a_reduce / n_examples, g_reduce / n_examples),
    }
    assert not torch.allclose(a_expand, a_reduce) and not torch.allclose(g_expand, g_reduce)

    common = dict(kfac_params=["linear.weight", "linear.bias"], num_samples=num_samples, normalize=normalize)
    default = compute_kfac_factors(model, data, dtype=F64, seed=7, **common)
    for mode, (a, g) in hand.items():
        factors = compute_kfac_factors(model, data, dtype=F64, seed=7, token_mode=mode, **common)
        assert factors.num_samples == n_examples
        torch.testing.assert_close(factors.kronecker["linear"][0], a, **TOL)
        torch.testing.assert_close(factors.kronecker["linear"][1], g, **TOL)
    assert_factors_equal(
        default, compute_kfac_factors(model, data, dtype=F64, seed=7, token_mode="expand", **common)
    )
    with pytest.raises(ValueError, match="token_mode"):
        compute_kfac_factors(model, data, token_mode="mean", **common)


# (2) Monte Carlo samples are summed -------------------------------------------------------------


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.mlp = nn.Linear(4, 4)
        self.proj = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(torch.tanh(self.mlp(self.norm(x))).mean(dim=1))


@pytest.mark.parametrize("token_mode", ["expand", "reduce"])
def test_monte_carlo_factors_are_the_sum_of_one_sample_factors(token_mode: str) -> None:
    torch.manual_seed(0)
    model = TinyEncoder().to(F64)
    data = [(torch.randn(3, 5, 4, dtype=F64),), (torch.randn(2, 5, 4, dtype=F64),)]
    common = dict(
        kfac_params=["mlp.weight", "mlp.bias", "proj.weight", "proj.bias"],
        gram_groups={"norm": ["norm.weight", "norm.bias"]},
        dtype=F64,
        token_mode=token_mode,
    )
    seed, k = 11, 3
    many = compute_kfac_factors(model, data, num_samples=k, seed=seed, **common)
    singles = [
        compute_kfac_factors(model, data, num_samples=1, seed=monte_carlo_seed(seed, s), **common)
        for s in range(k)
    ]
    assert monte_carlo_seed(seed, 0) == seed and len({monte_carlo_seed(seed, s) for s in range(k)}) == k
    summed = KFACFactors(
        {
            layer: (a, sum(single.kronecker[layer][1] for single in singles))
            for layer, (a, _) in singles[0].kronecker.items()
        },
        {group: sum(single.gram[group] for single in singles) for group in singles[0].gram},
        dict(singles[0].gram_params),
        singles[0].num_samples,
    )
    assert many.num_samples == 5
    assert_factors_equal(many, summed)


# (3) a tiny open_clip ViT against a port of Mammoth's hooks ------------------------------------


class MammothPort:
    """Mammoth's ``KFACComputer.compute`` with its hooks, in float64, on the chosen modules.

    Hooked like Mammoth: forward hooks accumulate ``x.T @ ((1 / R) * x)`` over the flattened tokens
    (the bias's 1 appended, ``concatone``) into ``aaT`` in a first, gradient-free pass; full backward
    hooks accumulate ``g.T @ ((1 / R) * g)`` of the output gradients into ``ggT`` in a second pass that
    backpropagates ``(features * r).sum()`` once per Monte Carlo vector ``r`` (Mammoth:
    ``torch.randn_like(features)``, here the vectors ``draw`` returns, so both sides use the same ones),
    with ``x * fake_param`` as input so the hooks fire. Layers without tokens ([batch, in], Mammoth's
    ``lin_proj``) accumulate ``x.T @ x`` (the ``_nosequence`` hooks). Layer norms: the per-example
    gradient summed over tokens, ``(grad_out * layer_norm(x)).sum(tokens)`` (and ``grad_out`` for the
    bias), and its Gram (``hook_backward_layer_norm``); the class token: the gradient of the first
    token where the class embedding enters (``hook_backward_cls_token``; here read at ``ln_pre``'s
    input, which is the class embedding plus a constant). open_clip 3.x runs its blocks batch-first,
    so R is dim 1 everywhere (Mammoth's OpenAI tower is sequence-first outside the attention, which
    is why it reads R from dim 0 there). Mammoth adds with Kahan summation; a plain sum differs only
    in rounding.
    """

    def __init__(self, model: nn.Module, linears: dict[str, bool], norms: list[str], class_token_at: str):
        self.model = model
        self.linears, self.norms, self.class_token_at = linears, norms, class_token_at
        self.aaT: dict[str, Tensor] = {}
        self.ggT: dict[str, Tensor] = {}
        self.ffT: dict[str, Tensor] = {}
        self.num_aaT = self.num_ggT = 0

    @staticmethod
    def _add(store: dict[str, Tensor], key: str, value: Tensor) -> None:
        store[key] = store[key] + value if key in store else value

    @staticmethod
    def _token_gram(x: Tensor) -> Tensor:
        if x.ndim == 2:
            return x.T @ x
        _, tokens, width = x.shape  # B, R, C
        x = x.reshape(-1, width)
        return x.T @ ((1.0 / tokens) * x)

    def compute(self, batches: list[Tensor], draw, num_samples: int) -> None:
        modules = dict(self.model.named_modules())
        handles = []

        def forward_hook(name, module, inputs, output):
            x = inputs[0].detach().double()
            if self.linears[name]:
                x = torch.cat((x, torch.ones_like(torch.sum(x, -1, keepdim=True))), -1)
            self._add(self.aaT, f"{name}.weight", self._token_gram(x))

        for name in self.linears:
            handles.append(
                modules[name].register_forward_hook(lambda m, i, o, n=name: forward_hook(n, m, i, o))
            )
        with torch.no_grad():
            for x in batches:
                self.num_aaT += x.shape[0]
                self.model(x)
        for handle in handles:
            handle.remove()

        stored_inputs: dict[str, Tensor] = {}

        def backward_hook(name, module, grad_input, grad_output):
            self._add(self.ggT, f"{name}.weight", self._token_gram(grad_output[0].double()))

        def norm_forward(name, module, inputs, output):
            stored_inputs[name] = inputs[0]

        def norm_backward(name, module, grad_input, grad_output):
            grad_out = grad_output[0].double()
            normalized = F.layer_norm(stored_inputs[name].double(), module.normalized_shape, eps=module.eps)
            grad_weight, grad_bias = (grad_out * normalized).sum(1), grad_out.sum(1)
            self._add(self.ffT, f"{name}.weight", grad_weight.T @ grad_weight)
            self._add(self.ffT, f"{name}.bias", grad_bias.T @ grad_bias)

        def class_token_backward(module, grad_input, grad_output):
            gram_grad = grad_input[0][:, 0].double()
            self._add(self.ffT, "class_token", gram_grad.T @ gram_grad)

        for name in self.linears:
            handles.append(
                modules[name].register_full_backward_hook(
                    lambda m, gi, go, n=name: backward_hook(n, m, gi, go)
                )
            )
        for name in self.norms:
            handles.append(
                modules[name].register_forward_hook(lambda m, i, o, n=name: norm_forward(n, m, i, o))
            )
            handles.append(
                modules[name].register_full_backward_hook(
                    lambda m, gi, go, n=name: norm_backward(n, m, gi, go)
                )
            )
        handles.append(modules[self.class_token_at].register_full_backward_hook(class_token_backward))
        fake_param = torch.tensor([1.0], dtype=F64, requires_grad=True)
        for x in batches:
            self.num_ggT += x.shape[0]
            features = self.model(x * fake_param)
            features = features / features.norm(dim=-1, keepdim=True)
            if num_samples > 0:
                vectors = draw(features)  # [S, batch, dim]
                for s in range(num_samples):
                    (features * vectors[s]).sum().backward(retain_graph=s < num_samples - 1)
            else:
                summed = features.sum(0)
                for k, feature in enumerate(summed):
                    feature.backward(retain_graph=k < summed.shape[0] - 1)
        for handle in handles:
            handle.remove()

    def penalty(self, layer: str, delta_w: Tensor, delta_b: Tensor | None) -> Tensor:
        """``TAK.penalty_weight`` for one layer and one task: factors divided by the counts (``begin_task``)."""
        aaT = self.aaT[f"{layer}.weight"] / self.num_aaT
        ggT = self.ggT[f"{layer}.weight"] / self.num_ggT
        if delta_b is not None:
            delta_w = torch.cat((delta_w, delta_b.unsqueeze(1)), 1)
        return torch.trace(ggT @ delta_w @ aaT @ delta_w.T)

    def gram_penalty(self, key: str, delta: Tensor) -> Tensor:
        delta = delta.reshape(1, -1)
        return torch.trace(delta @ (self.ffT[key] / self.num_ggT) @ delta.T)


TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": 32,
        "layers": 2,
        "width": 64,
        "head_width": 32,
        "patch_size": 8,
    },  # 17 tokens
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TOWER = "visual.trunk.transformer.resblocks"
# module -> kind: both blocks' attention and MLP linears with their biases, and the output
# projection without one (as TAK selects them)
LAYERS = {
    **{
        f"{TOWER}.{block}.{module}": kind
        for block in (0, 1)
        for module, kind in (
            ("attn.in_proj", "attention"),
            ("attn.out_proj", "attention"),
            ("mlp.c_fc", "mlp"),
            ("mlp.c_proj", "mlp"),
        )
    },
    "visual.projection": "projection",
}
NORM = f"{TOWER}.1.ln_1"
CLASS_TOKEN = "visual.trunk.class_embedding"
# Mammoth's names of the same modules (its OpenAI tower after ``surgery``), for its files.
MAMMOTH_NAMES = {
    **{
        layer: layer.removeprefix("visual.trunk.")
        .replace("attn.in_proj", "attn.qkv")
        .replace("attn.out_proj", "attn.proj")
        for layer in LAYERS
        if layer.startswith(TOWER)
    },
    "visual.projection": "lin_proj",
    NORM: "transformer.resblocks.1.ln_1",
}


@pytest.fixture(scope="module")
def tiny_vit():
    pytest.importorskip("open_clip")
    from clcore.algorithms.tak.clip_kfac_ready import make_kfac_ready
    from clcore.backbones.clip import CLIPVisualBackbone, load_open_clip

    torch.manual_seed(0)
    clip, _ = load_open_clip("clcore-test-tiny-vit", pretrained=None, model_cfg=TINY_CFG)
    backbone = make_kfac_ready(CLIPVisualBackbone(clip_model=clip)).to(F64).eval()
    images = torch.randn(6, 3, 32, 32, dtype=F64, generator=torch.Generator().manual_seed(1))
    return backbone, [images[:4], images[4:]]


def clcore_factors(backbone: nn.Module, batches: list[Tensor], **options) -> KFACFactors:
    kfac_params = [f"{layer}.weight" for layer in LAYERS] + [
        f"{layer}.bias" for layer in LAYERS if layer != "visual.projection"
    ]
    groups = {
        f"{NORM}.weight": [f"{NORM}.weight"],
        f"{NORM}.bias": [f"{NORM}.bias"],
        CLASS_TOKEN: [CLASS_TOKEN],
    }
    return compute_kfac_factors(
        backbone, [(x,) for x in batches], kfac_params=kfac_params, gram_groups=groups, dtype=F64, **options
    )


def mammoth_port(backbone: nn.Module, batches: list[Tensor], num_samples: int, seed: int) -> MammothPort:
    # The Monte Carlo vectors clcore draws for seed ``seed`` (sample s from monte_carlo_seed(seed, s)).
    generators = [torch.Generator().manual_seed(monte_carlo_seed(seed, s)) for s in range(num_samples)]

    def draw(features: Tensor) -> Tensor:
        return torch.stack([torch.randn(features.shape, generator=g, dtype=F64) for g in generators])

    port = MammothPort(
        copy.deepcopy(backbone),
        {layer: layer != "visual.projection" for layer in LAYERS},
        [NORM],
        "visual.trunk.ln_pre",
    )
    port.compute(batches, draw, num_samples)
    return port


def per_layer_penalties(factors: KFACFactors, deltas: dict[str, Tensor]) -> dict[str, Tensor]:
    values = {}
    for layer in LAYERS:
        names = [n for n in (f"{layer}.weight", f"{layer}.bias") if n in deltas]
        values[layer] = kfac_penalty({n: deltas[n] for n in names}, factors)
    for group in factors.gram:
        values[group] = kfac_penalty({group: deltas[group]}, factors)
    return values


def random_deltas(backbone: nn.Module, seed: int) -> dict[str, Tensor]:
    params = dict(backbone.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    names = [f"{layer}.weight" for layer in LAYERS] + [
        f"{layer}.bias" for layer in LAYERS if layer != "visual.projection"
    ]
    names += [f"{NORM}.weight", f"{NORM}.bias", CLASS_TOKEN]
    return {name: 0.01 * torch.randn(params[name].shape, generator=generator, dtype=F64) for name in names}


@pytest.mark.parametrize("num_samples", [1, 0])
def test_tiny_vit_factors_and_penalties_equal_mammoth_port(tiny_vit, num_samples: int) -> None:
    backbone, batches = tiny_vit
    seed = 3
    # the defaults: KFAC-expand, Monte Carlo sum (num_samples=1 is the default sample count)
    ours = clcore_factors(backbone, batches, num_samples=num_samples, seed=seed)
    port = mammoth_port(backbone, batches, num_samples, seed)
    assert ours.num_samples == port.num_aaT == port.num_ggT == 6
    for layer in LAYERS:
        a, b = ours.kronecker[layer]
        torch.testing.assert_close(a, port.aaT[f"{layer}.weight"] / port.num_aaT, **TOL)
        torch.testing.assert_close(b, port.ggT[f"{layer}.weight"] / port.num_ggT, **TOL)
    for group, key in ((f"{NORM}.weight",) * 2, (f"{NORM}.bias",) * 2, (CLASS_TOKEN, "class_token")):
        torch.testing.assert_close(ours.gram[group], port.ffT[key] / port.num_ggT, **TOL)

    deltas = random_deltas(backbone, seed=5)
    penalties = per_layer_penalties(ours, deltas)
    old = per_layer_penalties(
        clcore_factors(backbone, batches, num_samples=num_samples, seed=seed, token_mode="reduce"), deltas
    )
    ratios: dict[str, list[float]] = {}
    after: list[float] = []
    for layer, kind in LAYERS.items():
        reference = port.penalty(layer, deltas[f"{layer}.weight"], deltas.get(f"{layer}.bias"))
        torch.testing.assert_close(penalties[layer], reference, rtol=1e-12, atol=0.0)
        ratios.setdefault(kind, []).append(float(old[layer] / reference))
        after.append(float(penalties[layer] / reference))
    for group, key in ((f"{NORM}.weight",) * 2, (f"{NORM}.bias",) * 2, (CLASS_TOKEN, "class_token")):
        torch.testing.assert_close(
            penalties[group], port.gram_penalty(key, deltas[group]), rtol=1e-12, atol=0.0
        )
        # a Gram group has no token convention
        torch.testing.assert_close(old[group], penalties[group], rtol=1e-12, atol=0.0)
    samples = f"{num_samples} Monte Carlo sample" if num_samples else "exact"
    for kind, values in ratios.items():
        print(f"[{samples}] old (reduce) / Mammoth penalty, {kind}: " + ", ".join(f"{v:.3f}" for v in values))
    print(f"[{samples}] new (expand) / Mammoth penalty, every layer: {min(after):.15f} .. {max(after):.15f}")
    # The projection has no tokens: both conventions coincide there.
    assert ratios["projection"] == pytest.approx([1.0], rel=1e-12)
    if num_samples == 0:  # the finding (one Monte Carlo sample on 6 images is too noisy for it)
        assert all(value > 10 for value in ratios["attention"]), ratios
        assert all(value > 1.2 for value in ratios["mlp"]), ratios


# (4) Mammoth's files ---------------------------------------------------------------------------


def store_kfac_like_mammoth(folder, dataset_name: str, task_id: int, ggT, aaT, ffT, num_ggT, num_aaT) -> None:
    """What ``FisherLoader.store_kfac`` writes (``models/tak_utils/utils.py``)."""
    fisher_cache_path = f"{folder}/{dataset_name}_task_{task_id}.pt"
    torch.save(ggT, fisher_cache_path.replace(".pt", "_ggT.pt"))
    torch.save(aaT, fisher_cache_path.replace(".pt", "_aaT.pt"))
    torch.save(ffT, fisher_cache_path.replace(".pt", "_ffT.pt"))
    torch.save(torch.tensor([num_ggT]), fisher_cache_path.replace(".pt", "_num_ggT.pt"))
    torch.save(torch.tensor([num_aaT]), fisher_cache_path.replace(".pt", "_num_aaT.pt"))


def test_mammoth_names_translate_to_clcore_parameters(tiny_vit) -> None:
    backbone, _ = tiny_vit
    params = dict(backbone.named_parameters())
    for ours, theirs in MAMMOTH_NAMES.items():
        for attribute in ("weight", "bias"):
            if f"{ours}.{attribute}" in params:
                assert mammoth_to_clcore_name(f"{theirs}.{attribute}") == f"{ours}.{attribute}"
    assert mammoth_to_clcore_name("cls_token_layer.class_embedding") == CLASS_TOKEN
    assert mammoth_to_clcore_name("ln_pre.weight") == "visual.trunk.ln_pre.weight"
    assert (
        mammoth_to_clcore_name("transformer.resblocks.11.ln_2.bias")
        == "visual.trunk.transformer.resblocks.11.ln_2.bias"
    )
    assert (
        mammoth_to_clcore_name("conv1.weight") is None
        and mammoth_to_clcore_name("positional_embedding") is None
    )
    assert all(
        mammoth_to_clcore_name(name) in params or name == "proj"
        for name in ("ln_post.weight", "ln_post.bias")
    )


def test_mammoth_files_load_as_clcore_factors(tiny_vit, tmp_path) -> None:
    backbone, batches = tiny_vit
    port = mammoth_port(backbone, batches, num_samples=1, seed=3)
    aaT = {f"{MAMMOTH_NAMES[layer]}.weight": port.aaT[f"{layer}.weight"].float() for layer in LAYERS}
    ggT = {f"{MAMMOTH_NAMES[layer]}.weight": port.ggT[f"{layer}.weight"].float() for layer in LAYERS}
    ffT = {f"{MAMMOTH_NAMES[NORM]}.{attr}": port.ffT[f"{NORM}.{attr}"].float() for attr in ("weight", "bias")}
    ffT["cls_token_layer.class_embedding"] = port.ffT["class_token"].float()  # Mammoth's fp32 default
    store_kfac_like_mammoth(tmp_path, "seq-tiny", 0, ggT, aaT, ffT, port.num_ggT, port.num_aaT)

    assert mammoth_tasks(tmp_path) == {"seq-tiny": [0]}
    loaded = load_mammoth_factors(tmp_path, "seq-tiny", 0, model=backbone, dtype=F64)
    ours = clcore_factors(backbone, batches, num_samples=1, seed=3)
    assert loaded.num_samples == ours.num_samples == 6
    assert loaded.gram_params == {name: (name,) for name in ours.gram}
    for layer, (a, b) in ours.kronecker.items():  # to float32 rounding: Mammoth stored fp32
        torch.testing.assert_close(loaded.kronecker[layer][0], a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loaded.kronecker[layer][1], b, rtol=1e-5, atol=1e-6)
    for group, gram in ours.gram.items():
        torch.testing.assert_close(loaded.gram[group], gram, rtol=1e-5, atol=1e-6)
    deltas = random_deltas(backbone, seed=5)
    torch.testing.assert_close(kfac_penalty(deltas, loaded), kfac_penalty(deltas, ours), rtol=1e-5, atol=0.0)

    # Keys without a clcore name: refused by default, skipped on request.
    torch.save(
        {**ffT, "positional_embedding": torch.eye(17)}, mammoth_file_paths(tmp_path, "seq-tiny", 0)["ffT"]
    )
    with pytest.raises(ValueError, match="positional_embedding"):
        load_mammoth_factors(tmp_path, "seq-tiny", 0)
    assert load_mammoth_factors(tmp_path, "seq-tiny", 0, strict=False).gram.keys() == ours.gram.keys()
    # Counts that disagree, factors that do not fit the model, a missing task.
    torch.save(torch.tensor([5]), mammoth_file_paths(tmp_path, "seq-tiny", 0)["num_aaT"])
    with pytest.raises(ValueError, match="equal"):
        load_mammoth_factors(tmp_path, "seq-tiny", 0, strict=False)
    store_kfac_like_mammoth(
        tmp_path,
        "seq-tiny",
        1,
        {"lin_proj.weight": torch.eye(3)},
        {"lin_proj.weight": torch.eye(64)},
        {},
        2,
        2,
    )
    with pytest.raises(ValueError, match="do not fit"):
        load_mammoth_factors(tmp_path, "seq-tiny", 1, model=backbone)
    with pytest.raises(FileNotFoundError):
        load_mammoth_factors(tmp_path, "seq-tiny", 2)


# train_percent counts batches ------------------------------------------------------------------


def test_train_percent_counts_batches_as_mammoth() -> None:
    # 100 examples in batches of 32: 4 batches (the last of 4 examples), as a DataLoader without drop_last
    assert batches_for_factors(1.0, 4) == 4 and samples_for_factors(1.0, 100, 32) == 100
    assert batches_for_factors(0.5, 4) == 2 and samples_for_factors(0.5, 100, 32) == 64
    assert batches_for_factors(0.6, 4) == 2  # int(0.6 * 4): rounded down, as Mammoth
    assert batches_for_factors(3, 4) == 3 and samples_for_factors(3, 100, 32) == 96
    assert batches_for_factors(10, 4) == 4 and samples_for_factors(10, 100, 32) == 100
    assert batches_for_factors(0.1, 4) == 1  # Mammoth: int(0.4) = 0 batches, no factors; here 1 batch
