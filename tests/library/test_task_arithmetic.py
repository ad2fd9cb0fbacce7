"""Task arithmetic: linearised models, task vectors, merging methods and aTLAS, against the math."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clcore.task_arithmetic import (
    ATLASModel,
    LinearizedModel,
    LinearTaskVector,
    TaskVector,
    dare,
    entropy_objective,
    fit_atlas,
    iso,
    merge,
    ta,
    ties,
    tsv,
    tsv_factors,
)


def _mlp(seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _perturbed(model: nn.Module, scale: float, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for param in moved.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return moved


def _assert_vectors_close(a: TaskVector, b: TaskVector, **tolerance) -> None:
    assert a.keys() == b.keys()
    for name in a.keys():
        torch.testing.assert_close(a[name], b[name], **tolerance)


# -- linearised models ------------------------------------------------------------------------
def test_linearized_equals_model_at_theta0():
    model = _mlp()
    x = torch.randn(7, 5, dtype=torch.float64)
    torch.testing.assert_close(LinearizedModel(model)(x), model(x), rtol=0, atol=1e-12)


def test_linearized_is_first_order_taylor_checked_by_finite_differences():
    model = _mlp()
    x = torch.randn(7, 5, dtype=torch.float64)
    direction = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    theta_0 = {name: p.detach().clone() for name, p in model.named_parameters()}

    def f(step: float) -> torch.Tensor:  # the non-linear network at theta_0 + step * direction
        params = {name: theta_0[name] + step * direction[name] for name in theta_0}
        return torch.func.functional_call(model, params, (x,))

    linear = LinearizedModel(model)
    eps = 1e-2
    with torch.no_grad():
        for name, param in linear.model.named_parameters():
            param.copy_(theta_0[name] + eps * direction[name])
    h = 1e-5
    directional_derivative = (f(h) - f(-h)) / (2 * h)  # central difference: error O(h^2)
    expected = f(0.0) + eps * directional_derivative
    torch.testing.assert_close(linear(x), expected, rtol=0, atol=1e-9)
    # and it is not the network itself there: the second-order term is visible
    assert (f(eps) - expected).abs().max() > 1e-7


def test_linearized_is_exactly_linear_in_the_delta():
    model = _mlp()
    x = torch.randn(4, 5, dtype=torch.float64)
    linear = LinearizedModel(model)
    at_zero = linear(x).detach()
    with torch.no_grad():
        for param in linear.model.parameters():
            param.add_(0.3)
    once = linear(x).detach() - at_zero
    with torch.no_grad():
        for param in linear.model.parameters():
            param.add_(0.3)
    torch.testing.assert_close(linear(x).detach() - at_zero, 2 * once, rtol=1e-10, atol=1e-10)


def test_training_linearized_model_changes_only_theta():
    model = _mlp(dtype=torch.float32)
    linear = LinearizedModel(model)
    theta_0_before = {name: t.clone() for name, t in linear.theta_0().items()}
    assert all(name.startswith("model.") for name, _ in linear.named_parameters())
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    optimizer = torch.optim.SGD(linear.parameters(), lr=0.5)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(linear(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for name, value in linear.theta_0().items():
        assert torch.equal(value, theta_0_before[name])
    assert any(d.abs().max() > 0 for d in linear.delta().values())


class _ScaledBN(nn.Module):
    """A forward with a keyword argument and a buffer the forward updates (BatchNorm stats)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x, scale: float = 1.0):
        return scale * self.norm(self.linear(x))


def test_linearized_passes_kwargs_and_updates_buffers_like_the_model():
    torch.manual_seed(0)
    model = _ScaledBN().train()
    reference = copy.deepcopy(model)
    linear = LinearizedModel(model)
    x = torch.randn(6, 4)
    torch.testing.assert_close(linear(x, scale=2.0), reference(x, scale=2.0))
    torch.testing.assert_close(model.norm.running_mean, reference.norm.running_mean)
    assert model.norm.num_batches_tracked.item() == 1
    linear.to(torch.float64)
    assert linear.theta_0()["linear.weight"].dtype == torch.float64
    assert linear(x.double(), scale=1.0).dtype == torch.float64


# -- task vectors -----------------------------------------------------------------------------
@pytest.fixture
def bn_models():
    torch.manual_seed(0)
    pretrained = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    finetuned = _perturbed(pretrained, 0.1, seed=1)
    finetuned[1].running_mean.add_(0.5)
    finetuned[1].num_batches_tracked.add_(7)
    return pretrained, finetuned


def test_task_vector_keeps_float_entries_only(bn_models):
    pretrained, finetuned = bn_models
    tau = TaskVector.from_models(pretrained, finetuned)
    assert "1.num_batches_tracked" not in tau
    torch.testing.assert_close(tau["1.running_mean"], torch.full((4,), 0.5))
    torch.testing.assert_close(tau["0.weight"], finetuned[0].weight - pretrained[0].weight)


def test_task_vector_arithmetic_identities():
    a = TaskVector({"w": torch.randn(3, 2), "b": torch.randn(2)})
    b = TaskVector({"w": torch.randn(3, 2), "b": torch.randn(2)})
    _assert_vectors_close(a + b - b, a)
    negated = -a
    _assert_vectors_close(-negated, a)
    _assert_vectors_close(2 * a, a + a)
    _assert_vectors_close(a * 2, a + a)
    _assert_vectors_close(sum([a, b]), a + b)
    flat = torch.cat([a["w"].flatten(), a["b"]])
    torch.testing.assert_close(a.norm(), flat.double().norm())
    with pytest.raises(TypeError):
        a + a.to_linear()
    with pytest.raises(ValueError):
        a + TaskVector({"w": torch.randn(3, 2)})


def test_apply_to_gives_theta0_at_zero_and_theta_ft_at_one(bn_models):
    pretrained, finetuned = bn_models
    tau = TaskVector.from_models(pretrained, finetuned)
    at_zero, at_one = tau.apply_to(pretrained, 0.0), tau.apply_to(pretrained, 1.0)
    for name, value in pretrained.state_dict().items():
        torch.testing.assert_close(at_zero.state_dict()[name], value)
    for name, value in finetuned.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(at_one.state_dict()[name], value)
    assert at_one.state_dict()["1.num_batches_tracked"] == pretrained[1].num_batches_tracked  # not a weight
    negated = (-tau).apply_to(pretrained, 0.5)
    torch.testing.assert_close(negated[0].weight, pretrained[0].weight - 0.5 * tau["0.weight"])
    assert not torch.equal(pretrained[0].weight, at_one[0].weight)  # a copy was edited, not the model


def test_task_vector_save_load_keeps_kind(tmp_path):
    tau = TaskVector({"w": torch.randn(2, 2)})
    linear_tau = tau.to_linear()
    tau.save(tmp_path / "tau.pt")
    linear_tau.save(tmp_path / "linear_tau.pt")
    loaded, loaded_linear = TaskVector.load(tmp_path / "tau.pt"), TaskVector.load(tmp_path / "linear_tau.pt")
    assert type(loaded) is TaskVector and type(loaded_linear) is LinearTaskVector
    _assert_vectors_close(loaded, tau)
    _assert_vectors_close(loaded_linear, linear_tau)


def test_linear_task_vectors_and_casts_between_kinds():
    pretrained = _mlp()
    x = torch.randn(5, 5, dtype=torch.float64)
    finetuned_linear = LinearizedModel(copy.deepcopy(pretrained))
    with torch.no_grad():
        for param in finetuned_linear.model.parameters():
            param.add_(0.05)
    linear_tau = LinearTaskVector.from_linearized(finetuned_linear)
    _assert_vectors_close(linear_tau, LinearTaskVector.from_linearized(finetuned_linear.state_dict()))
    # coef 1 on a fresh linearisation of the pre-trained model reproduces the fine-tuned linear model
    rebuilt = linear_tau.apply_to(LinearizedModel(pretrained), 1.0)
    torch.testing.assert_close(rebuilt(x), finetuned_linear(x))
    # linear vector on the non-linear network: theta_0 + tau there
    nonlinear = linear_tau.to_nonlinear().apply_to(pretrained, 1.0)
    torch.testing.assert_close(nonlinear[0].weight, pretrained[0].weight + 0.05)
    # post-hoc linearisation: a standard vector as the delta of the linearised model
    standard_tau = TaskVector.from_models(pretrained, nonlinear)
    posthoc = standard_tau.to_linear().apply_to(LinearizedModel(pretrained), 1.0)
    torch.testing.assert_close(posthoc(x), finetuned_linear(x))
    with pytest.raises(TypeError):
        standard_tau.apply_to(LinearizedModel(pretrained))
    with pytest.raises(TypeError):
        linear_tau.apply_to(pretrained)


# -- merging ----------------------------------------------------------------------------------
def _random_vectors(count: int, seed: int = 0) -> list[TaskVector]:
    generator = torch.Generator().manual_seed(seed)
    return [
        TaskVector({"w": torch.randn(6, 4, generator=generator), "b": torch.randn(4, generator=generator)})
        for _ in range(count)
    ]


def test_ta_is_scaled_sum():
    vectors = _random_vectors(3)
    _assert_vectors_close(ta(vectors, alpha=0.4), 0.4 * (vectors[0] + vectors[1] + vectors[2]))
    _assert_vectors_close(merge(vectors, "ta", alpha=0.4), ta(vectors, alpha=0.4))


def test_ties_hand_computed():
    # k = 0.5 of 6 entries: each task keeps int(0.5 * 6) + 1 = 4 (the official TIES count) of its
    # largest magnitudes (over "w" and "b" together), and any entry tied with the 4th:
    # task 1 keeps 4, 3, 2, -1; task 2 -6, -5, 2, -1; task 3 4, -3, -2 and both magnitudes 1 (-1, 1).
    vectors = [
        {"w": torch.tensor([[4.0, -1.0], [2.0, 0.1]]), "b": torch.tensor([3.0, -0.2])},
        {"w": torch.tensor([[2.0, -6.0], [-1.0, 0.3]]), "b": torch.tensor([-5.0, 0.4])},
        {"w": torch.tensor([[-1.0, -2.0], [-3.0, 0.5]]), "b": torch.tensor([1.0, 4.0])},
    ]
    # elected signs: w00 +(4+2-1), w01 -(-1-6-2), w10 -(2-1-3), w11 none, b0 -(3-5+1), b1 +(4)
    # disjoint means: w00 (4+2)/2, w01 (-1-6-2)/3, w10 (-1-3)/2, w11 0, b0 -5/1, b1 4/1
    merged = ties(vectors, k=0.5, alpha=1.0)
    torch.testing.assert_close(merged["w"], torch.tensor([[3.0, -3.0], [-2.0, 0.0]]))
    torch.testing.assert_close(merged["b"], torch.tensor([-5.0, 4.0]))
    _assert_vectors_close(ties(vectors, k=0.5, alpha=2.0), 2 * merged)
    single = ties(vectors[:1], k=1.0)
    torch.testing.assert_close(single["w"], vectors[0]["w"])


def test_dare_is_unbiased_and_rescales_survivors():
    vectors = _random_vectors(2)
    p = 0.5
    once = dare(vectors, p=p, seed=3)
    _assert_vectors_close(once, dare(vectors, p=p, seed=3))  # seeded
    single = dare(vectors[:1], p=p, seed=5)["w"]
    survivors = single != 0
    torch.testing.assert_close(single[survivors], vectors[0]["w"][survivors] / (1 - p))
    _assert_vectors_close(dare(vectors, p=0.0), ta(vectors))

    num_seeds = 400
    mean = sum(dare(vectors, p=p, seed=seed) for seed in range(num_seeds)) * (1.0 / num_seeds)
    expected = ta(vectors)
    for name in expected.keys():
        # each task's entry is tau * Bernoulli(1-p) / (1-p): variance tau^2 p / (1-p) per draw
        std = (torch.stack([v[name] for v in vectors]).pow(2).sum(0) * p / (1 - p) / num_seeds).sqrt()
        assert ((mean[name] - expected[name]).abs() <= 5 * std + 1e-6).all()


def test_iso_has_flat_spectrum_along_mean_directions():
    vectors = _random_vectors(3)
    alpha = 0.7
    merged = iso(vectors, alpha=alpha)
    mean_w = torch.stack([v["w"] for v in vectors]).mean(0)
    left, values, right_t = torch.linalg.svd(mean_w, full_matrices=False)
    merged_values = torch.linalg.svdvals(merged["w"])
    torch.testing.assert_close(merged_values, torch.full_like(merged_values, alpha * values.mean().item()))
    # same singular directions as the mean task matrix: U^T merged V is alpha * mean(S) * I
    torch.testing.assert_close(
        left.T @ merged["w"] @ right_t.T, alpha * values.mean() * torch.eye(4), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(merged["b"], alpha * torch.stack([v["b"] for v in vectors]).mean(0))


def test_tsv_factors_are_orthonormal_and_recover_orthogonal_tasks():
    vectors = _random_vectors(3)
    left, values, right = tsv_factors(torch.stack([v["w"] for v in vectors]))
    assert left.shape == (6, 3) and right.shape == (4, 3)  # r = 4, T = 3: one triplet per task
    torch.testing.assert_close(left.T @ left, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(right.T @ right, torch.eye(3), atol=1e-5, rtol=0)
    for task, vector in enumerate(vectors):  # each task contributes its top singular value
        torch.testing.assert_close(values[task], torch.linalg.svdvals(vector["w"])[0])
    # tasks in orthogonal blocks: the kept triplets are the tasks themselves, so TSV-M is their sum
    generator = torch.Generator().manual_seed(1)
    block_1, block_2 = torch.zeros(4, 4), torch.zeros(4, 4)
    block_1[:2, :2] = torch.randn(2, 2, generator=generator)
    block_2[2:, 2:] = torch.randn(2, 2, generator=generator)
    merged = tsv([{"w": block_1}, {"w": block_2}], alpha=1.0)
    torch.testing.assert_close(merged["w"], block_1 + block_2, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        tsv(vectors, alpha=2.0)["b"], 2 * torch.stack([v["b"] for v in vectors]).mean(0)
    )


def test_merge_dispatch_and_knob_errors():
    vectors = _random_vectors(2)
    _assert_vectors_close(merge(vectors, "ties", k=0.3, alpha=0.5), ties(vectors, k=0.3, alpha=0.5))
    linear = merge([v.to_linear() for v in vectors], "iso")
    assert type(linear) is LinearTaskVector
    with pytest.raises(ValueError, match="unknown merging method"):
        merge(vectors, "average")
    with pytest.raises(ValueError, match="no knob"):
        merge(vectors, "ta", k=0.2)
    for method, knobs in [
        ("ta", {"alpha": float("inf")}),
        ("ties", {"k": 0.0}),
        ("ties", {"k": 1.5}),
        ("dare", {"p": 1.0}),
        ("dare", {"p": -0.1}),
        ("tsv", {"alpha": float("nan")}),
    ]:
        with pytest.raises(ValueError):
            merge(vectors, method, **knobs)
    with pytest.raises(TypeError):
        merge([vectors[0], vectors[1].to_linear()], "ta")


# -- aTLAS ------------------------------------------------------------------------------------
def test_atlas_gradients_reach_only_the_coefficients():
    base = _mlp(dtype=torch.float32)
    vectors = [TaskVector.from_models(base, _perturbed(base, 0.1, seed=s)) for s in (1, 2)]
    atlas = ATLASModel(base, vectors)
    x = torch.randn(8, 5)
    loss = atlas(x).pow(2).sum()
    loss.backward()
    assert [name for name, p in atlas.named_parameters() if p.requires_grad] == ["coefficients"]
    assert atlas.coefficients.grad is not None and atlas.coefficients.grad.abs().sum() > 0
    assert all(p.grad is None for p in base.parameters())
    assert atlas.coefficients.shape == (2, 4)  # 2 task vectors x 4 parameter blocks


def test_atlas_composes_blockwise_and_materialises():
    base = _mlp()
    vectors = [TaskVector.from_models(base, _perturbed(base, 0.1, seed=s)) for s in (1, 2)]
    atlas = ATLASModel(base, vectors)
    with torch.no_grad():
        atlas.coefficients.copy_(
            torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 0.25, 0.0, 3.0]], dtype=torch.float64)
        )
    expected = copy.deepcopy(base)
    with torch.no_grad():
        for block, name in enumerate(atlas.block_names):
            param = expected.get_parameter(name)
            param.add_(
                atlas.coefficients[0, block] * vectors[0][name]
                + atlas.coefficients[1, block] * vectors[1][name]
            )
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(atlas(x), expected(x))
    materialised = copy.deepcopy(base)
    materialised.load_state_dict(atlas.merged_state_dict())
    torch.testing.assert_close(materialised(x), expected(x))


def test_fit_atlas_learns_coefficients_few_shot_and_test_time():
    torch.manual_seed(0)
    base = _mlp(dtype=torch.float32)
    target = _perturbed(base, 0.5, seed=1)
    vectors = [
        TaskVector.from_models(base, target),
        TaskVector.from_models(base, _perturbed(base, 0.5, seed=2)),
    ]
    x = torch.randn(64, 5)
    with torch.no_grad():
        labels = target(x).argmax(dim=1)
    batches = [(x[i : i + 16], labels[i : i + 16]) for i in range(0, 64, 16)]
    atlas = ATLASModel(base, vectors)
    losses = fit_atlas(atlas, batches, objective="cross_entropy", epochs=10)
    assert losses[-1] < 0.8 * losses[0]
    unlabelled = [x[i : i + 16] for i in range(0, 64, 16)]
    tta = ATLASModel(_mlp(dtype=torch.float32), vectors)
    before = entropy_objective(tta(x)).item()
    fit_atlas(tta, unlabelled, objective="entropy", epochs=10)
    assert entropy_objective(tta(x)).item() < before
    with pytest.raises(ValueError):
        fit_atlas(atlas, batches, objective="hinge")


def test_atlas_on_a_linearized_model_takes_linear_vectors():
    base = _mlp(dtype=torch.float32)
    linear = LinearizedModel(base)
    vectors = [TaskVector.from_models(base, _perturbed(base, 0.1, seed=s)).to_linear() for s in (1, 2)]
    atlas = ATLASModel(linear, vectors, init_coef=1.0)
    x = torch.randn(3, 5)
    expected = (vectors[0] + vectors[1]).apply_to(LinearizedModel(base))
    torch.testing.assert_close(atlas(x), expected(x))
    atlas(x).sum().backward()
    assert atlas.coefficients.grad.abs().sum() > 0
    with pytest.raises(TypeError):
        ATLASModel(LinearizedModel(base), [v.to_nonlinear() for v in vectors])


# -- purity ---------------------------------------------------------------------------------------
def test_importing_task_arithmetic_loads_neither_lightning_nor_hydra_nor_an_application():
    """The library layer is pure PyTorch (issue 12). In a fresh interpreter: this session has both loaded."""
    probe = (
        "import sys, clcore.task_arithmetic\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'hydra')"
        " or m.startswith(('clcore.clta', 'clcore.clrun'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert loaded.stdout.strip() == "[]"
