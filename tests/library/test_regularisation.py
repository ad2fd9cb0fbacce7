"""EWC, online EWC, SI, MAS and L2 against their equations, on tiny tensors, and end to end.

Every reference value is computed here the slow, obvious way (a Python loop over samples with
``torch.autograd.grad``, or a closed form), never by the code under test.
"""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from clcore.algorithms.ewc import EWC, empirical_fisher_sum, true_fisher_sum
from clcore.algorithms.l2 import L2
from clcore.algorithms.mas import mas_importance_sum
from clcore.algorithms.online_ewc import OnlineEWC
from clcore.algorithms.si import SI, PathIntegral, si_importance
from clcore.backbones.mlp import MLP
from clcore.callbacks.base import CLCallback
from clcore.clrun import run_sequence
from clcore.clrun.checks import preflight
from clcore.components.parameter_penalty import ParameterPenalty
from clcore.config_rules import ConfigError
from clcore.heads.til import HeadsTIL
from tests.conftest import QUIET, compose_config
from tests.helpers import Batches, FailInTask, quiet_trainer

ALGORITHMS = ("ewc", "online_ewc", "si", "mas", "l2")


# ---- a 2-layer net and the per-sample references -------------------------------------------------
def two_layer_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))


def logits_function(net: nn.Module):
    return lambda params, x: functional_call(net, params, (x,))


def parameters_of(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in net.named_parameters()}


def per_sample_gradient(net: nn.Module, scalar_of_logits, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradient of ``scalar_of_logits(net(x[None])[0])`` for one sample, by plain autograd."""
    names, params = zip(*net.named_parameters(), strict=True)
    grads = torch.autograd.grad(scalar_of_logits(net(x.unsqueeze(0))[0]), params)
    return dict(zip(names, grads, strict=True))


def make_algorithm(cls, **options):
    """``cls`` on a 3 -> 4 -> 2 MLP with TIL heads and plain SGD."""
    backbone = MLP(3, (4,), 2)
    return cls(backbone, HeadsTIL(2), functools.partial(torch.optim.SGD, lr=0.1), num_tasks=3, **options)


def data(n: int = 5):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=generator), torch.randint(0, 3, (n,), generator=generator)


# ---- the penalty block -----------------------------------------------------------------------------
def test_penalty_is_the_importance_weighted_squared_distance_summed_over_terms():
    penalty = ParameterPenalty()
    penalty.add_term({"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([0.5, 3.0])})
    penalty.add_term(
        {"w": torch.tensor([0.0, 0.0]), "b": torch.tensor(1.0)}, {"w": torch.ones(2), "b": torch.tensor(2.0)}
    )
    theta = {"w": torch.tensor([2.0, 0.0], requires_grad=True), "b": torch.tensor(3.0, requires_grad=True)}
    value = penalty(theta)
    # term 1: 0.5 * 1^2 + 3 * 2^2 = 12.5; term 2: 2^2 + 0^2 + 2 * 2^2 = 12
    assert value.item() == pytest.approx(24.5)
    value.backward()
    analytic = penalty.gradient(theta)
    torch.testing.assert_close(analytic["w"], theta["w"].grad)
    torch.testing.assert_close(analytic["b"], theta["b"].grad)
    # 2 * (0.5 * 1 + 1 * 2, 3 * (-2) + 1 * 0) and 2 * 2 * 2
    torch.testing.assert_close(analytic["w"], torch.tensor([5.0, -12.0]))
    assert analytic["b"].item() == pytest.approx(8.0)


def test_merge_decays_the_old_importance_and_moves_the_anchor():
    penalty = ParameterPenalty()
    penalty.merge({"w": torch.tensor([1.0])}, {"w": torch.tensor([4.0])}, decay=0.5)
    penalty.merge(
        {"w": torch.tensor([3.0]), "new": torch.tensor([0.0])},
        {"w": torch.tensor([1.0]), "new": torch.tensor([7.0])},
        decay=0.5,
    )
    assert penalty.num_terms == 1
    anchor, importance = penalty.terms[0]
    assert anchor["w"].item() == 3.0
    assert importance["w"].item() == pytest.approx(0.5 * 4.0 + 1.0)
    assert importance["new"].item() == 7.0  # a parameter new in this task joins with its own importance
    penalty.merge(
        {"w": torch.tensor([0.0]), "new": torch.tensor([0.0])},
        {"w": torch.tensor([1.0]), "new": torch.tensor([1.0])},
        decay=0.0,
    )
    assert penalty.terms[0][1]["w"].item() == 1.0  # decay 0 replaces (L2)


def test_penalty_state_round_trips_through_a_weights_only_load():
    penalty = ParameterPenalty()
    penalty.add_term({"w": torch.randn(3)}, {"w": torch.rand(3)})
    penalty.add_term({"w": torch.randn(3)}, {"w": torch.rand(3)})
    buffer = io.BytesIO()
    torch.save(penalty.state_dict(), buffer)
    buffer.seek(0)
    restored = ParameterPenalty()
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    theta = {"w": torch.randn(3)}
    assert restored(theta).item() == penalty(theta).item()


# ---- EWC's Fisher diagonal ----------------------------------------------------------------------------
def test_empirical_fisher_is_the_mean_squared_log_likelihood_gradient_at_the_labels():
    net, (x, y) = two_layer_net(), data()
    expected = {name: torch.zeros_like(p) for name, p in net.named_parameters()}
    for xn, yn in zip(x, y, strict=True):
        g = per_sample_gradient(net, lambda logits, yn=yn: torch.log_softmax(logits, -1)[yn], xn)
        for name in expected:
            expected[name] += g[name] ** 2
    got = empirical_fisher_sum(logits_function(net), parameters_of(net), x, y)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])


def test_true_fisher_is_the_expectation_over_the_model_predictive_distribution():
    net, (x, _) = two_layer_net(), data()
    expected = {name: torch.zeros_like(p) for name, p in net.named_parameters()}
    for xn in x:
        probabilities = torch.softmax(net(xn.unsqueeze(0))[0], -1).detach()
        for c in range(3):
            g = per_sample_gradient(net, lambda logits, c=c: torch.log_softmax(logits, -1)[c], xn)
            for name in expected:
                expected[name] += probabilities[c] * g[name] ** 2
    got = true_fisher_sum(logits_function(net), parameters_of(net), x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])
    # and it differs from the empirical one (which uses the data's labels)
    empirical = empirical_fisher_sum(logits_function(net), parameters_of(net), x, data()[1])
    assert not torch.allclose(got["0.weight"], empirical["0.weight"])


def test_ewc_estimates_the_fisher_on_the_task_training_data_as_prepared_for_training(make_config):
    """Permuted digits: a Fisher on unpermuted or unnormalised inputs, or with dropout on, would differ."""

    class Capture(CLCallback):
        def on_task_end(self, trainer, algorithm, task_id, results):
            self.benchmark, self.algorithm = trainer.datamodule, algorithm

    capture = Capture()
    run_sequence(
        make_config(
            "algorithm=ewc",
            "algorithm.fisher=empirical",
            "benchmark.num_tasks=1",
            "backbone.dropout=0.5",
            "backbone.hidden_dims=[16]",
            "trainer.limit_train_batches=3",
            "save_checkpoints=false",
        ),
        extra_callbacks=[capture],
    )
    algorithm, benchmark = capture.algorithm, capture.benchmark
    split = benchmark.task_split("train", 0)
    x = benchmark.prepare_batch(split.images, 0)
    algorithm.eval()
    names, params = zip(*[(n, p) for n, p in algorithm.named_parameters() if p.requires_grad], strict=True)
    expected = [torch.zeros_like(p) for p in params]
    for xn, yn in zip(x, split.labels, strict=True):
        loss = F.cross_entropy(algorithm(xn.unsqueeze(0), 0), yn.unsqueeze(0))
        for total, g in zip(expected, torch.autograd.grad(loss, params), strict=True):
            total += g**2
    ((anchor, fisher),) = algorithm.penalty.terms
    for name, total in zip(names, expected, strict=True):
        torch.testing.assert_close(fisher[name], total / len(x), rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(anchor[name], dict(algorithm.named_parameters())[name].detach())


def test_ewc_keeps_one_term_per_task_and_online_ewc_one_decayed_running_fisher(monkeypatch):
    fishers = iter([{"w": torch.tensor([2.0])}, {"w": torch.tensor([3.0])}])
    anchors = iter([{"w": torch.tensor([1.0])}, {"w": torch.tensor([5.0])}])
    for cls in (EWC, OnlineEWC):
        monkeypatch.setattr(cls, "penalised_parameters", lambda self: next(anchors))
        monkeypatch.setattr(cls, "fisher_diagonal", lambda self: next(fishers))
    ewc = make_algorithm(EWC, reg_lambda=4.0)
    ewc.update_penalty()
    ewc.update_penalty()
    theta = {"w": torch.tensor([0.0])}
    # lambda/2 * (2 * (0-1)^2 + 3 * (0-5)^2) = 2 * 77
    assert ewc.penalty_scale * ewc.penalty(theta).item() == pytest.approx(154.0)

    fishers = iter([{"w": torch.tensor([2.0])}, {"w": torch.tensor([3.0])}])
    anchors = iter([{"w": torch.tensor([1.0])}, {"w": torch.tensor([5.0])}])
    online = make_algorithm(OnlineEWC, reg_lambda=4.0, gamma=0.25)
    online.update_penalty()
    online.update_penalty()
    ((anchor, running),) = online.penalty.terms
    assert running["w"].item() == pytest.approx(0.25 * 2.0 + 3.0)  # F* <- gamma F* + F_t
    assert anchor["w"].item() == 5.0  # around the latest parameters only
    assert online.penalty_scale * online.penalty(theta).item() == pytest.approx(2 * 3.5 * 25)


# ---- SI's path integral -------------------------------------------------------------------------------
def test_si_path_integral_of_sgd_on_a_quadratic_is_known_in_closed_form():
    """Plain SGD on L = a/2 (theta - c)^2: theta_k - c = (1 - eta a)^k (theta_0 - c), g_k = a (theta_k - c).

    omega = -sum g_k Delta_k = eta sum g_k^2 (a geometric sum), and each step lowers L by exactly
    eta g_k^2 (1 - eta a / 2), so omega (1 - eta a / 2) is the loss decrease, and omega tends to it as
    eta -> 0 (the continuous path integral).
    """
    a, c, theta0 = 2.0, 1.0, 3.0
    for eta, steps in ((0.1, 30), (1e-3, 3000)):
        theta = torch.tensor([theta0], dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.SGD([theta], lr=eta)
        path = PathIntegral()
        for _ in range(steps):
            optimizer.zero_grad()
            (0.5 * a * (theta - c) ** 2).sum().backward()
            path.before_step({"theta": theta}, {"theta": theta.grad})
            optimizer.step()
            path.after_step({"theta": theta})
        omega = path.omega["theta"].item()
        r = (1 - eta * a) ** 2
        closed_form = eta * a**2 * (theta0 - c) ** 2 * (1 - r**steps) / (1 - r)
        loss_decrease = 0.5 * a * ((theta0 - c) ** 2 - (theta.item() - c) ** 2)
        assert omega == pytest.approx(closed_form, rel=1e-9)
        assert omega * (1 - eta * a / 2) == pytest.approx(loss_decrease, rel=1e-9)
        assert omega == pytest.approx(loss_decrease, rel=eta * a)


def test_si_importance_divides_by_the_squared_change_plus_damping():
    got = si_importance({"w": torch.tensor([2.0, 1.0])}, {"w": torch.tensor([1.0, 0.0])}, xi=0.5)
    torch.testing.assert_close(got["w"], torch.tensor([2.0 / 1.5, 1.0 / 0.5]))


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_si_accumulates_the_task_loss_gradient_times_each_step_in_training():
    """Two tasks under Lightning with plain SGD, replayed by hand: omega = -sum g_task . Delta theta,
    with Delta theta = -eta g_total (task loss + SI's penalty), then Omega += omega / (Delta^2 + xi)."""
    torch.manual_seed(0)
    lr, c, xi = 0.1, 0.5, 1e-3
    algorithm, reference = make_algorithm(SI, reg_lambda=c, xi=xi), make_algorithm(SI, reg_lambda=c, xi=xi)
    for model in (algorithm, reference):  # both heads exist from the start, so the two start equal
        model.setup_task(0, 2)
        model.setup_task(1, 2)
    reference.load_state_dict(algorithm.state_dict())
    tasks = [[(torch.randn(4, 3), torch.randint(0, 2, (4,)), t) for _ in range(3)] for t in range(2)]

    params = dict(reference.named_parameters())
    importance, anchor = {}, {}
    for task_id, batches in enumerate(tasks):
        algorithm.setup_task(task_id, 2)
        quiet_trainer(limit_val_batches=0).fit(algorithm, train_dataloaders=Batches(batches))

        start = {n: p.detach().clone() for n, p in params.items()}
        omega = {n: torch.zeros_like(p) for n, p in params.items()}
        for x, y, t in batches:
            task_loss = F.cross_entropy(reference(x, t), y)
            penalty = sum((importance[n] * (params[n] - anchor[n]) ** 2).sum() for n in anchor)
            g_task = torch.autograd.grad(
                task_loss, list(params.values()), allow_unused=True, retain_graph=True
            )
            g_total = torch.autograd.grad(task_loss + c * penalty, list(params.values()), allow_unused=True)
            with torch.no_grad():
                for (n, p), g, total in zip(params.items(), g_task, g_total, strict=True):
                    if total is not None:
                        delta = -lr * total
                        omega[n] -= (g if g is not None else 0) * delta
                        p += delta
        importance = {
            n: importance.get(n, 0) + omega[n] / ((params[n].detach() - start[n]) ** 2 + xi) for n in params
        }
        anchor = {n: p.detach().clone() for n, p in params.items()}

    ((got_anchor, got_importance),) = algorithm.penalty.terms
    assert set(got_importance) == set(importance)
    for name in importance:
        torch.testing.assert_close(got_importance[name], importance[name], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got_anchor[name], anchor[name])
    assert got_importance["backbone.layers.1.weight"].abs().sum() > 0


# ---- MAS ------------------------------------------------------------------------------------------------
def test_mas_importance_is_the_mean_absolute_gradient_of_the_squared_output_norm():
    net, (x, _) = two_layer_net(), data()
    expected = {name: torch.zeros_like(p) for name, p in net.named_parameters()}
    for xn in x:
        g = per_sample_gradient(net, lambda logits: (logits**2).sum(), xn)
        for name in expected:
            expected[name] += g[name].abs()
    got = mas_importance_sum(logits_function(net), parameters_of(net), x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])


# ---- L2 and the loss ---------------------------------------------------------------------------------------
def test_l2_loss_is_the_task_loss_plus_half_lambda_squared_distance_to_the_last_task():
    algorithm = make_algorithm(L2, reg_lambda=3.0)
    algorithm.setup_task(0, 2)
    algorithm.update_penalty()
    anchor = {n: p.detach().clone() for n, p in algorithm.named_parameters()}
    with torch.no_grad():
        for p in algorithm.parameters():
            p.add_(0.1)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    with pytest.warns(UserWarning, match="self.log"):  # no Trainer: logging is skipped
        loss = algorithm.training_step((x, y, 0), 0)
    distance = sum(((p - anchor[n]) ** 2).sum() for n, p in algorithm.named_parameters())
    expected = F.cross_entropy(algorithm(x, 0), y) + 3.0 / 2 * distance
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert distance.item() == pytest.approx(0.01 * sum(p.numel() for p in algorithm.parameters()), rel=1e-4)


# ---- the rules -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("algorithm", "overrides", "messages"),
    [
        (
            "ewc",
            ["algorithm.reg_lambda=-1", "algorithm.fisher=sampled"],
            ["reg_lambda=-1", "fisher='sampled'"],
        ),
        (
            "online_ewc",
            ["algorithm.gamma=0", "algorithm.importance_samples=0"],
            ["gamma=0", "importance_samples=0"],
        ),
        ("si", ["algorithm.xi=0", "algorithm.reg_lambda=inf"], ["xi=0", "reg_lambda=inf"]),
        ("mas", ["algorithm.reg_lambda=nan"], ["reg_lambda=nan"]),
        ("l2", ["algorithm.reg_lambda=-0.5"], ["reg_lambda=-0.5"]),
    ],
)
def test_bad_options_are_refused_before_training_with_every_problem(
    make_config, algorithm, overrides, messages
):
    with pytest.raises(ConfigError) as refused:
        preflight(make_config(f"algorithm={algorithm}", *overrides))
    assert len(refused.value.problems) == len(messages)
    for message in messages:
        assert any(message in problem for problem in refused.value.problems), refused.value.problems


def test_the_constructor_applies_the_same_rules():
    with pytest.raises(ConfigError, match="gamma=1.5"):
        make_algorithm(OnlineEWC, gamma=1.5)
    assert make_algorithm(EWC, fisher=True).fisher == "true"  # an unquoted YAML true


# ---- end to end ------------------------------------------------------------------------------------------------
TINY = [
    "benchmark=split_digits",
    "benchmark.num_tasks=2",
    "trainer.limit_train_batches=3",
    "save_checkpoints=false",
]


@pytest.mark.parametrize("paradigm", ["til", "cil", "dil"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_runs_in_every_paradigm_with_a_penalty_from_the_second_task(make_config, algorithm, paradigm):
    class Terms(CLCallback):
        def __init__(self):
            self.counts = []

        def on_task_end(self, trainer, algorithm, task_id, results):
            self.counts.append(algorithm.penalty.num_terms)

    terms = Terms()
    results = run_sequence(
        make_config(f"algorithm={algorithm}", f"paradigm={paradigm}", *TINY), extra_callbacks=[terms]
    )
    assert torch.isfinite(results.acc_matrix[1, :2]).all()
    assert terms.counts == ([1, 2] if algorithm == "ewc" else [1, 1])


# Finetuning forgets task 1 here (lr 0.01, 3 epochs); a strong penalty keeps the backbone near it.
FORGETTING = [
    "benchmark=split_digits",
    "benchmark.num_tasks=3",
    "trainer.max_epochs=3",
    "optimizer.lr=0.01",
    "save_checkpoints=false",
]
STRONG = {"ewc": 1e6, "online_ewc": 1e6, "si": 10.0, "mas": 10.0, "l2": 10.0}


@pytest.fixture(scope="module")
def finetuning_forgetting(tmp_path_factory):
    """Finetuning's forgetting in this setting, run once for the module."""
    config = compose_config([*QUIET, "algorithm=finetuning", *FORGETTING], tmp_path_factory.mktemp("ft"))
    return forgetting(run_sequence(config).acc_matrix)


def forgetting(R: torch.Tensor) -> float:
    """Mean drop of each earlier task from just after its training to the end, R[j, j] - R[T-1, j]."""
    T = R.shape[0]
    return float(sum(R[j, j] - R[T - 1, j] for j in range(T - 1)) / (T - 1))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_strong_penalty_forgets_less_than_finetuning_in_til(make_config, algorithm, finetuning_forgetting):
    results = run_sequence(
        make_config(f"algorithm={algorithm}", f"algorithm.reg_lambda={STRONG[algorithm]}", *FORGETTING)
    )
    assert finetuning_forgetting > 0.1  # the setting forgets
    assert forgetting(results.acc_matrix) < finetuning_forgetting / 2


# ---- resume -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_run_that_crashed_after_task_1_resumes_to_the_same_matrix(make_config, algorithm):
    """The penalty (anchors, importances; EWC's per-task terms) lives only in ``cl_state_dict``."""
    run = [
        f"algorithm={algorithm}",
        "benchmark=split_digits",
        "benchmark.num_tasks=3",
        "trainer.limit_train_batches=4",
        "backbone.dropout=0.2",
    ]
    reference = run_sequence(make_config(*run, subdir="reference"))
    cfg = make_config(*run, subdir="crashed")
    with pytest.raises(RuntimeError, match="simulated crash in task 2"):
        run_sequence(cfg, extra_callbacks=[FailInTask(task=2)])
    assert sorted(p.name for p in (Path(cfg.paths.output_dir) / "checkpoints").glob("*.ckpt")) == [
        "task_1.ckpt"
    ]
    resumed = run_sequence(cfg)
    torch.testing.assert_close(resumed.acc_matrix, reference.acc_matrix, rtol=0, atol=0, equal_nan=True)
    assert not math.isnan(float(resumed.acc_matrix[2, 0]))
