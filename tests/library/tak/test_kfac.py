"""KFAC factors and the TAK penalty (Porrello et al., ICLR 2026) against exact Gauss-Newton matrices.

The reference is G = (1/N) sum_n J_n^T J_n with J_n = d features(x_n) / d params from
``torch.func.jacrev``; a penalty is checked as tau^T G tau.

Where KFAC is exact: per example, J_n^T J_n = (a_n a_n^T) (x) (sum_k g_nk g_nk^T) for a linear
layer, so one example's factors reproduce it exactly. Over N > 1 examples KFAC takes the
Kronecker product of the expectations, E[a a^T] (x) E[g g^T], not the expectation of the
Kronecker products: the two agree when one side is the same for every example, e.g. a single
linear layer with raw outputs (every g_k = e_k, B = I). With L2-normalised outputs B changes per
example: then the pooled factors equal the mean over all example PAIRS (n, m) of
tr(B_n dW A_m dW^T), while averaging per-example pairs (Eq. 7 with one "task" per example)
gives the exact value; both identities are checked below.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from clcore.algorithms.tak.fisher_cache import cache_file, load_or_compute_factors
from clcore.algorithms.tak.kfac import KFACFactors, compute_kfac_factors, linear_param_names
from clcore.algorithms.tak.kfac_penalty import accumulate_factors, kfac_penalty

F64 = torch.float64


def exact_gauss_newton(model: nn.Module, inputs: Tensor, names: list[str], normalize: bool) -> Tensor:
    """(1/N) sum_n J_n^T J_n over the parameters ``names``, flattened and concatenated in that order."""
    params = {name: param.detach() for name, param in model.named_parameters() if name in names}

    def features(p: dict[str, Tensor], x: Tensor) -> Tensor:
        out = functional_call(model, p, (x.unsqueeze(0),)).squeeze(0)
        return F.normalize(out, dim=-1) if normalize else out

    jacobians = vmap(jacrev(features), in_dims=(None, 0))(params, inputs)  # name -> [N, D, *shape]
    flat = torch.cat([jacobians[name].flatten(2) for name in names], dim=2)  # [N, D, P]
    return torch.einsum("ndp,ndq->pq", flat, flat) / inputs.shape[0]


def random_deltas(model: nn.Module, names: list[str], generator: torch.Generator) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    return {name: torch.randn(params[name].shape, generator=generator, dtype=F64) for name in names}


def flat(deltas: dict[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([deltas[name].flatten() for name in names])


def batches(inputs: Tensor, batch_size: int) -> list[tuple[Tensor]]:
    return [(chunk,) for chunk in inputs.split(batch_size)]


class TokenLinear(nn.Module):
    """A linear layer over tokens [B, L, d], then the mean over tokens (a ViT's pooled output)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).mean(dim=1)


class TinyEncoder(nn.Module):
    """Class token + layer norm + token MLP + projection: the parameter kinds TAK regularises."""

    def __init__(self, d: int = 4, d_out: int = 3) -> None:
        super().__init__()
        self.class_token = nn.Parameter(torch.randn(d) * 0.5)
        self.norm = nn.LayerNorm(d)
        self.mlp = nn.Linear(d, d)
        self.proj = nn.Linear(d, d_out, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        tokens = torch.cat([self.class_token.expand(x.shape[0], 1, -1), x], dim=1)
        hidden = tokens + torch.tanh(self.mlp(self.norm(tokens)))
        return self.proj(hidden[:, 0])


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 4)).to(F64)


# (1) exactness on a single linear layer ------------------------------------------------------


@pytest.mark.parametrize("normalize, num_points", [(False, 8), (True, 1)])
def test_single_linear_kfac_equals_exact_gauss_newton(normalize: bool, num_points: int) -> None:
    """Exact cases: raw outputs (B = I for every example) with N = 8, normalised outputs with N = 1."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).to(F64)
    inputs = torch.randn(num_points, 5, dtype=F64)
    names = ["weight", "bias"]
    factors = compute_kfac_factors(
        layer, batches(inputs, 3), kfac_params=names, num_samples=0, normalize=normalize, dtype=F64
    )
    assert factors.num_samples == num_points
    gauss_newton = exact_gauss_newton(layer, inputs, names, normalize)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        deltas = random_deltas(layer, names, generator)
        tau = flat(deltas, names)
        torch.testing.assert_close(kfac_penalty(deltas, factors), tau @ gauss_newton @ tau)


def test_normalised_outputs_over_many_points_expectation_vs_kronecker() -> None:
    """N = 6 normalised: Eq. 7 over per-example factors is exact; pooled KFAC is the mean over pairs."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).to(F64)
    inputs = torch.randn(6, 5, dtype=F64)
    names = ["weight", "bias"]
    common = dict(kfac_params=names, num_samples=0, normalize=True, dtype=F64)
    per_example = [compute_kfac_factors(layer, [(x[None],)], **common) for x in inputs]
    pooled = compute_kfac_factors(layer, batches(inputs, 4), **common)
    gauss_newton = exact_gauss_newton(layer, inputs, names, normalize=True)

    deltas = random_deltas(layer, names, torch.Generator().manual_seed(2))
    tau = flat(deltas, names)
    exact = tau @ gauss_newton @ tau
    torch.testing.assert_close(kfac_penalty(deltas, accumulate_factors(per_example, ideal=True)), exact)

    update = torch.cat([deltas["weight"], deltas["bias"][:, None]], dim=1)
    over_pairs = torch.stack(
        [
            torch.trace(fn.kronecker[""][1] @ update @ fm.kronecker[""][0] @ update.T)
            for fn in per_example
            for fm in per_example
        ]
    ).mean()
    pooled_penalty = kfac_penalty(deltas, pooled)
    torch.testing.assert_close(pooled_penalty, over_pairs)
    assert not torch.isclose(pooled_penalty, exact, rtol=1e-3), (
        "KFAC over pooled data is an approximation here"
    )


def test_token_inputs_reduce_mode_uses_mean_input_and_summed_output_gradient() -> None:
    """[B, L, d] inputs pooled by a mean: KFAC-reduce is exact; per-token outer products (the
    default, the reference's KFAC-expand, see test_kfac_conventions.py) are not."""
    torch.manual_seed(0)
    model = TokenLinear(4, 3).to(F64)
    inputs = torch.randn(5, 7, 4, dtype=F64)
    names = ["linear.weight", "linear.bias"]
    common = dict(kfac_params=names, num_samples=0, normalize=False, dtype=F64)
    factors = compute_kfac_factors(model, batches(inputs, 2), token_mode="reduce", **common)
    gauss_newton = exact_gauss_newton(model, inputs, names, normalize=False)
    deltas = random_deltas(model, names, torch.Generator().manual_seed(3))
    tau = flat(deltas, names)
    torch.testing.assert_close(kfac_penalty(deltas, factors), tau @ gauss_newton @ tau)
    expand = compute_kfac_factors(model, batches(inputs, 2), **common)
    assert not torch.isclose(kfac_penalty(deltas, expand), tau @ gauss_newton @ tau, rtol=1e-2)

    # The same tokens fed sequence-first ([L, B, d]) give the same factors.
    class SequenceFirst(nn.Module):
        def __init__(self, inner: TokenLinear) -> None:
            super().__init__()
            self.linear = inner.linear

        def forward(self, x: Tensor) -> Tensor:
            return self.linear(x.transpose(0, 1)).mean(dim=0)

    sequence_first = compute_kfac_factors(
        SequenceFirst(model),
        batches(inputs, 2),
        kfac_params=names,
        num_samples=0,
        normalize=False,
        dtype=F64,
        sequence_first=True,
        token_mode="reduce",
    )
    for got, expected in zip(sequence_first.kronecker["linear"], factors.kronecker["linear"]):
        torch.testing.assert_close(got, expected)


# (2) Monte Carlo converges to the exact backward ----------------------------------------------


def test_monte_carlo_output_factors_converge_to_exact() -> None:
    """S samples are summed (the reference's convention): B / S converges to the exact B."""
    model = mlp()
    inputs = torch.randn(12, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    names = linear_param_names(model)
    data = batches(inputs, 6)
    common = dict(kfac_params=names, normalize=True, dtype=F64)
    exact = compute_kfac_factors(model, data, num_samples=0, **common)

    def relative_error(num_samples: int) -> float:
        estimate = compute_kfac_factors(model, data, num_samples=num_samples, seed=4, **common)
        errors = [
            torch.linalg.norm(estimate.kronecker[name][1] / num_samples - b) / torch.linalg.norm(b)
            for name, (_, b) in exact.kronecker.items()
        ]
        for name, (a, _) in exact.kronecker.items():  # A does not depend on the projections
            torch.testing.assert_close(estimate.kronecker[name][0], a)
        return float(torch.stack(errors).mean())

    one, many = relative_error(1), relative_error(1000)
    assert many < 0.1
    assert many < one / 5, (one, many)


# (3) Eq. 7 and Eq. 8 ---------------------------------------------------------------------------


def test_eq7_and_eq8_agree_for_one_task_and_follow_their_formulas_for_two() -> None:
    model = mlp()
    generator = torch.Generator().manual_seed(5)
    names = linear_param_names(model)
    common = dict(kfac_params=names, num_samples=0, normalize=True, dtype=F64)
    task_a = compute_kfac_factors(
        model, batches(torch.randn(6, 6, dtype=F64, generator=generator), 3), **common
    )
    task_b = compute_kfac_factors(
        model, batches(torch.randn(10, 6, dtype=F64, generator=generator), 5), **common
    )
    deltas = random_deltas(model, names, generator)

    ideal_one = kfac_penalty(deltas, accumulate_factors([task_a], ideal=True))
    default_one = kfac_penalty(deltas, accumulate_factors([task_a], ideal=False))
    torch.testing.assert_close(ideal_one, default_one)
    torch.testing.assert_close(ideal_one, kfac_penalty(deltas, task_a))

    weight_a, weight_b = 6 / 16, 10 / 16
    ideal, expected_ideal = kfac_penalty(deltas, accumulate_factors([task_a, task_b], ideal=True)), 0.0
    default, expected_default = kfac_penalty(deltas, accumulate_factors([task_a, task_b])), 0.0
    for layer in task_a.kronecker:
        update = torch.cat([deltas[f"{layer}.weight"], deltas[f"{layer}.bias"][:, None]], dim=1)
        (a_a, b_a), (a_b, b_b) = task_a.kronecker[layer], task_b.kronecker[layer]
        expected_ideal += weight_a * torch.trace(b_a @ update @ a_a @ update.T)
        expected_ideal += weight_b * torch.trace(b_b @ update @ a_b @ update.T)
        expected_default += torch.trace((b_a + b_b) @ update @ (weight_a * a_a + weight_b * a_b) @ update.T)
    torch.testing.assert_close(ideal, expected_ideal)
    torch.testing.assert_close(default, expected_default)


# (4) the disk cache -----------------------------------------------------------------------------


def test_cache_round_trips_and_rejects_mismatched_or_corrupt_files(tmp_path) -> None:
    model = TinyEncoder().to(F64)
    inputs = torch.randn(4, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(6))
    calls = []

    def compute() -> KFACFactors:
        calls.append(1)
        return compute_kfac_factors(
            model,
            batches(inputs, 2),
            kfac_params=linear_param_names(model),
            gram_groups={"norm": ["norm.weight", "norm.bias"]},
            num_samples=1,
            seed=0,
            dtype=F64,
        )

    key = {"dataset": "toy", "task": 1, "model": "tiny", "num_samples": 1}
    first = load_or_compute_factors(tmp_path, key, compute)
    second = load_or_compute_factors(tmp_path, dict(reversed(key.items())), compute)  # same key, other order
    assert len(calls) == 1
    assert second.num_samples == first.num_samples and second.gram_params == first.gram_params
    for name, (a, b) in first.kronecker.items():
        assert torch.equal(second.kronecker[name][0], a) and torch.equal(second.kronecker[name][1], b)
    assert torch.equal(second.gram["norm"], first.gram["norm"])
    assert torch.load(cache_file(tmp_path, key), weights_only=True)["key"]

    other_key = {**key, "task": 2}
    cache_file(tmp_path, other_key).write_bytes(cache_file(tmp_path, key).read_bytes())
    with pytest.raises(ValueError, match=r"kfac-.*\.pt holds factors for key"):
        load_or_compute_factors(tmp_path, other_key, compute)

    cache_file(tmp_path, key).write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot be read"):
        load_or_compute_factors(tmp_path, key, compute)
    for remote in ("https://example.org/kfac", "hf://user/kfac"):
        with pytest.raises(ValueError, match="only local folders"):
            load_or_compute_factors(remote, key, compute)
    assert len(calls) == 1


# (5) a minimum at tau = 0 ----------------------------------------------------------------------


def test_penalty_is_nonnegative_with_zero_gradient_at_zero() -> None:
    model = TinyEncoder().to(F64)
    inputs = torch.randn(6, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(7))
    groups = {"norm": ["norm.weight", "norm.bias"], "class_token": ["class_token"]}
    factors = compute_kfac_factors(
        model,
        batches(inputs, 3),
        kfac_params=linear_param_names(model),
        gram_groups=groups,
        num_samples=1,
        seed=1,
    )
    scalers = {"proj": 0.1, "norm": 10.0, "class_token": 10.0}
    names = [name for name, _ in model.named_parameters()]

    zeros = {name: torch.zeros_like(param, requires_grad=True) for name, param in model.named_parameters()}
    value = kfac_penalty(zeros, factors, scalers)
    grads = torch.autograd.grad(value, list(zeros.values()))
    assert value.item() == 0.0 and all(torch.count_nonzero(g) == 0 for g in grads)

    generator = torch.Generator().manual_seed(8)
    for _ in range(20):
        deltas = {name: delta.float() for name, delta in random_deltas(model, names, generator).items()}
        assert kfac_penalty(deltas, factors, scalers).item() >= 0.0


# (6) full Gram groups --------------------------------------------------------------------------


def test_gram_group_penalty_equals_quadratic_form_of_exact_gram() -> None:
    model = TinyEncoder().to(F64)
    inputs = torch.randn(5, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(9))
    groups = {"norm": ["norm.weight", "norm.bias"], "class_token": ["class_token"]}
    factors = compute_kfac_factors(
        model,
        batches(inputs, 2),
        kfac_params=[],
        gram_groups=groups,
        num_samples=0,
        normalize=True,
        dtype=F64,
    )
    generator = torch.Generator().manual_seed(10)
    all_deltas, scaled_total = {}, 0.0
    for group, names in groups.items():
        gram = exact_gauss_newton(model, inputs, names, normalize=True)
        torch.testing.assert_close(factors.gram[group], gram)
        deltas = random_deltas(model, names, generator)
        tau = flat(deltas, names)
        torch.testing.assert_close(kfac_penalty(deltas, factors), tau @ gram @ tau)
        all_deltas.update(deltas)
        scaled_total = scaled_total + 3.0 * (tau @ gram @ tau)
    torch.testing.assert_close(
        kfac_penalty(all_deltas, factors, {"norm": 3.0, "class_token": 3.0}), scaled_total
    )


# the bookkeeping around the factors ------------------------------------------------------------


def test_factor_arithmetic_state_dict_and_model_left_untouched() -> None:
    model = TinyEncoder().to(F64).train()
    for param in model.parameters():
        param.requires_grad_(False)  # a frozen zero-shot encoder
    inputs = torch.randn(4, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(11))
    factors = compute_kfac_factors(
        model,
        batches(inputs, 2),
        kfac_params=["mlp.weight", "proj.weight"],
        gram_groups={"token": ["class_token"]},
        num_samples=2,
        seed=0,
        dtype=F64,
    )
    assert model.training and not any(param.requires_grad for param in model.parameters())
    assert all(not module._forward_hooks for module in model.modules())
    assert factors.kronecker["mlp"][0].shape == (4, 4)  # no bias column: mlp.bias is not selected

    doubled = factors + factors.scale(1.0)
    assert doubled.num_samples == 8
    torch.testing.assert_close(doubled.kronecker["mlp"][1], 2 * factors.kronecker["mlp"][1])
    scaled = factors.scale(0.5)
    torch.testing.assert_close(scaled.kronecker["mlp"][0], 0.5 * factors.kronecker["mlp"][0])
    torch.testing.assert_close(scaled.gram["token"], 0.5 * factors.gram["token"])
    assert sum([factors, factors]).num_samples == 8
    assert factors.to(torch.float32).kronecker["proj"][1].dtype == torch.float32

    restored = KFACFactors.from_state_dict(factors.state_dict())
    assert restored.gram_params == factors.gram_params
    assert torch.equal(restored.kronecker["proj"][0], factors.kronecker["proj"][0])


def test_clear_errors_for_unhookable_or_unknown_parameters() -> None:
    attention = nn.MultiheadAttention(4, 2, batch_first=True).to(F64)

    class Attend(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = attention

        def forward(self, x: Tensor) -> Tensor:
            return self.attention(x, x, x, need_weights=False)[0].mean(dim=1)

    data = batches(torch.randn(2, 3, 4, dtype=F64), 2)
    with pytest.raises(ValueError, match="never called through their forward"):
        compute_kfac_factors(Attend(), data, kfac_params=["attention.out_proj.weight"])
    with pytest.raises(ValueError, match="not the weight or bias of an nn.Linear"):
        compute_kfac_factors(Attend(), data, kfac_params=["attention.in_proj_weight"])
    layer = nn.Linear(3, 2)
    factors = compute_kfac_factors(layer, [(torch.randn(2, 3),)], kfac_params=["weight"])
    with pytest.raises(ValueError, match="no curvature"):
        kfac_penalty({"weight": torch.zeros(2, 3), "other": torch.zeros(1)}, factors)
