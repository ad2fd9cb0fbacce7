"""TAK's tangent model of the normalised features (``tangent_of: normalised``, the reference's) and of
the raw ones (``raw``, tangent task arithmetic's, TAK's behaviour before the option existed).

With g = normalize o f the normalised tangent model is g(theta_0) + J_g(theta_0) tau: the first-order
Taylor expansion of the normalised features, checked here against central finite differences of
normalize(f) in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from clcore.algorithms.tak.weight_delta import forward_with_delta
from clcore.task_arithmetic import LinearizedModel
from clcore.task_arithmetic.linearize import normalize_features
from tests.library.tak.test_tak import mlp_tak, randomize


def small_mlp(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 4)).to(dtype)


def normalised_at(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """normalize(f(x; params)): the non-linear normalised features."""
    return F.normalize(functional_call(model, params, (x,)), dim=-1)


def directional_derivative(model, theta_0, direction, x, h: float = 1e-6) -> torch.Tensor:
    """(normalize(f(theta_0 + h d)) - normalize(f(theta_0 - h d))) / 2h: J_g d up to O(h^2)."""
    plus = {name: theta_0[name] + h * direction[name] for name in theta_0}
    minus = {name: theta_0[name] - h * direction[name] for name in theta_0}
    return (normalised_at(model, plus, x) - normalised_at(model, minus, x)) / (2 * h)


@pytest.fixture
def setting():
    model = small_mlp()
    x = torch.randn(9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    theta_0 = {name: p.detach().clone() for name, p in model.named_parameters()}
    direction = {
        name: torch.randn(p.shape, dtype=p.dtype, generator=generator) for name, p in theta_0.items()
    }
    return model, x, theta_0, direction


@pytest.mark.parametrize("eps", [1e-3, 0.1, 1.0])
def test_the_normalised_tangent_is_the_first_order_taylor_expansion_of_normalize_f(setting, eps):
    model, x, theta_0, direction = setting
    g_0 = normalised_at(model, theta_0, x)
    expected = directional_derivative(model, theta_0, direction, x)
    delta = {name: eps * d for name, d in direction.items()}
    linearised = forward_with_delta(model, delta, x, tangent=True, output_map=normalize_features)
    torch.testing.assert_close((linearised - g_0) / eps, expected, rtol=0, atol=1e-8)
    # The central differences converge to it as O(h^2): the error falls 100-fold per 10-fold smaller h.
    errors = [
        float(
            ((linearised - g_0) / eps - directional_derivative(model, theta_0, direction, x, h)).abs().max()
        )
        for h in (1e-3, 1e-4)
    ]
    assert 50 < errors[0] / errors[1] < 200, errors
    # The features move along the unit sphere's tangent at g_0: no radial component.
    torch.testing.assert_close(
        (g_0 * (linearised - g_0)).sum(-1), torch.zeros(9, dtype=torch.float64), rtol=0, atol=1e-12
    )


def test_the_linearized_model_with_an_output_map_linearises_the_map_too(setting):
    model, x, theta_0, direction = setting
    eps = 0.05
    linear = LinearizedModel(copy.deepcopy(model), output_map=normalize_features)
    with torch.no_grad():
        for name, param in linear.model.named_parameters():
            param.copy_(theta_0[name] + eps * direction[name])
    expected = normalised_at(model, theta_0, x) + eps * directional_derivative(model, theta_0, direction, x)
    torch.testing.assert_close(linear(x), expected, rtol=0, atol=1e-9)
    # and forward_with_delta computes the same function (TAK's path)
    delta = {name: eps * d for name, d in direction.items()}
    torch.testing.assert_close(
        forward_with_delta(model, delta, x, tangent=True, output_map=normalize_features),
        linear(x),
        rtol=0,
        atol=1e-12,
    )


def test_normalised_and_raw_agree_at_theta_0_and_differ_to_first_order(setting):
    model, x, theta_0, direction = setting
    zero = {name: torch.zeros_like(d) for name, d in direction.items()}
    normalised = forward_with_delta(model, zero, x, tangent=True, output_map=normalize_features)
    raw = F.normalize(forward_with_delta(model, zero, x, tangent=True), dim=-1)
    torch.testing.assert_close(normalised, raw, rtol=0, atol=1e-15)
    delta = {name: 0.3 * d for name, d in direction.items()}
    normalised = F.normalize(
        forward_with_delta(model, delta, x, tangent=True, output_map=normalize_features), dim=-1
    )
    raw = F.normalize(forward_with_delta(model, delta, x, tangent=True), dim=-1)
    assert (normalised - raw).abs().max() > 1e-3  # the radial part of J_f tau: not a rounding difference


def test_raw_mode_is_the_old_computation_exactly(tmp_path):
    algorithm = mlp_tak(2, tmp_path, tangent_of="raw")
    randomize(algorithm)
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(3))
    delta = algorithm.weight_delta.materialize()
    # TAK's features before tangent_of existed: jvp of the raw network, then F.normalize.
    theta_0 = {name: dict(algorithm.backbone.named_parameters())[name].detach() for name in delta}

    def model_at(params):
        return functional_call(algorithm.backbone, params, (x,))

    output, change = jvp(model_at, (theta_0,), (dict(delta),))
    old = F.normalize(output + change, dim=-1)
    assert torch.equal(algorithm.features(x, delta), old)
    # LinearizedModel without an output map is unchanged too: f(theta_0) + J_f (theta - theta_0).
    model = small_mlp()
    x64 = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(LinearizedModel(model)(x64), model(x64), rtol=0, atol=0)


def test_tak_uses_the_normalised_tangent_by_default_and_normalises_what_the_head_sees(tmp_path):
    algorithm = mlp_tak(2, tmp_path)
    assert algorithm.tangent_of == "normalised"
    randomize(algorithm, scale=0.2)
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(4))
    delta = algorithm.weight_delta.materialize()
    features = algorithm.features(x, delta)

    # Independently, in float64: normalize(g_0 + J_g tau) with J_g tau from central differences.
    backbone = copy.deepcopy(algorithm.backbone).double()
    theta_0 = {name: p.detach().clone() for name, p in backbone.named_parameters()}
    tau = {name: tensor.detach().double() for name, tensor in delta.items()}
    direction = {name: tau.get(name, torch.zeros_like(p)) for name, p in theta_0.items()}
    x64 = x.double()
    linearised = normalised_at(backbone, theta_0, x64) + directional_derivative(
        backbone, theta_0, direction, x64
    )
    torch.testing.assert_close(features.double(), F.normalize(linearised, dim=-1), rtol=0, atol=2e-5)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(6), rtol=0, atol=1e-5)

    # Not the raw tangent, and the same as the raw one at theta_0.
    raw = mlp_tak(2, tmp_path, tangent_of="raw")
    raw.weight_delta.load_state_dict(algorithm.weight_delta.state_dict())
    assert (raw.features(x, delta) - features).abs().max() > 1e-4
    assert torch.equal(raw.features(x, None), algorithm.features(x, None))

    # Gradients reach tau through the normalised tangent (training works).
    algorithm.features(x, algorithm.weight_delta.materialize())[:, 0].sum().backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in algorithm.weight_delta.parameters())


def test_tangent_of_changes_nothing_without_the_tangent(tmp_path):
    normalised = mlp_tak(2, tmp_path, tangent=False)
    raw = mlp_tak(2, tmp_path, tangent=False, tangent_of="raw")
    randomize(normalised)
    raw.weight_delta.load_state_dict(normalised.weight_delta.state_dict())
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(5))
    delta = normalised.weight_delta.materialize()
    assert torch.equal(normalised.features(x, delta), raw.features(x, delta))
