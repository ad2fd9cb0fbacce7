"""AdaHAT against its equations (Wang et al., ECML PKDD 2024, Sec. 3.1, Eqs. 7-9) on tiny networks.

Masks are set by hand through the task embeddings (+1 -> unit kept, -1 -> unit masked), so the
summative masks, importances and rates below are written out from the equations, not recomputed
by the code under test. AdaHAT does not promise bit-identical old-task outputs (HAT's tests do);
these test what it does promise: unused parameters train at rate 1, used ones at exactly
``r / (I + r)``, task 1 exactly as HAT, and the state needed for it survives a crash.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import pytest
import torch

from clcore.algorithms.adahat import (
    AdaHAT,
    adahat_adjustment_rate,
    layer_network_sparsity,
    previous_summative_mask,
)
from clcore.algorithms.hat import HAT
from clcore.backbones.hat_mlp import HATMaskMLP
from clcore.clrun.task_loop import run_sequence
from clcore.config_rules import ConfigError
from clcore.heads.til import HeadsTIL
from tests.helpers import Batches, crash_and_resume, quiet_trainer

SGD = functools.partial(torch.optim.SGD, lr=1.0)

# Two finished tasks on the tiny MLP (3 inputs -> fc1: 4 units -> fc2: 2 units).
TASK_1 = {"fc1": [1, 1, 0, 0], "fc2": [1, 0]}
TASK_2 = {"fc1": [1, 0, 1, 0], "fc2": [1, 1]}
# Eq. 7 by hand: per unit, how many of tasks 1-2 keep it.
SUMMATIVE = {"fc1": [2, 1, 1, 0], "fc2": [2, 1]}
# Per parameter, min over the two units a weight joins (fc1 reads the unmasked input: its own unit).
IMPORTANCE = {
    "fc1.weight": [[2, 2, 2], [1, 1, 1], [1, 1, 1], [0, 0, 0]],
    "fc1.bias": [2, 1, 1, 0],
    "fc2.weight": [[2, 1, 1, 0], [1, 1, 1, 0]],  # rows: min(2, .) and min(1, .) of fc1's [2, 1, 1, 0]
    "fc2.bias": [2, 1],
}


def tiny_mlp(num_tasks: int = 3) -> HATMaskMLP:
    return HATMaskMLP(3, (4,), 2, num_tasks=num_tasks)


def make_adahat(backbone, **kwargs) -> AdaHAT:
    optimizer = kwargs.pop("optimizer", SGD)
    return AdaHAT(backbone, HeadsTIL(backbone.output_dim), optimizer, num_tasks=backbone.num_tasks, **kwargs)


def set_binary_masks(backbone, task_id: int, kept: dict[str, list[int]]) -> None:
    with torch.no_grad():
        for name, pattern in kept.items():
            backbone.gates[name].embeddings[task_id].copy_(torch.tensor(pattern, dtype=torch.float) * 2 - 1)


def with_two_tasks_done(**kwargs) -> AdaHAT:
    """AdaHAT on the tiny MLP with tasks 1-2 finished (masks TASK_1, TASK_2), set up for task 3."""
    torch.manual_seed(0)
    backbone = tiny_mlp()
    algorithm = make_adahat(backbone, **kwargs)
    for task_id, kept in enumerate((TASK_1, TASK_2)):
        algorithm.setup_task(task_id, 2)
        set_binary_masks(backbone, task_id, kept)
        backbone.store_mask(task_id)
    algorithm.setup_task(2, 2)
    return algorithm


# ---- Eq. 7: the summative mask, and parameter importance --------------------------------------------
def test_summative_mask_counts_the_tasks_that_keep_each_unit():
    backbone = with_two_tasks_done().backbone
    as_lists = lambda masks: {name: mask.tolist() for name, mask in masks.items()}  # noqa: E731
    assert as_lists(previous_summative_mask(backbone, 0)) == {"fc1": [0.0] * 4, "fc2": [0.0] * 2}
    floats = lambda masks: {name: [float(v) for v in pattern] for name, pattern in masks.items()}  # noqa: E731
    assert as_lists(previous_summative_mask(backbone, 1)) == floats(TASK_1)
    assert as_lists(previous_summative_mask(backbone, 2)) == floats(SUMMATIVE)
    # HAT's cumulative mask is the max, not the count: unit 0 of fc1 is 1 there, 2 here
    assert backbone.previous_cumulative_mask(2)["fc1"].tolist() == [1.0, 1.0, 1.0, 0.0]
    measures = backbone.parameter_measures(previous_summative_mask(backbone, 2), aggregation="min")
    got = {
        f"{name}.{kind}": m.tolist()
        for name, pair in measures.items()
        for kind, m in zip(("weight", "bias"), pair)
    }
    assert got == {k: torch.tensor(v, dtype=torch.float).tolist() for k, v in IMPORTANCE.items()}


# ---- network sparsity: HAT's Eq. 5 per layer -------------------------------------------------------------
def test_network_sparsity_is_the_share_of_each_layers_free_units_the_mask_claims():
    previous = {"fc1": torch.tensor([1.0, 1.0, 0.0, 0.0]), "fc2": torch.tensor([1.0, 1.0])}
    masks = {"fc1": torch.tensor([0.9, 0.3, 0.5, 0.25]), "fc2": torch.tensor([0.4, 0.6])}
    sparsity = layer_network_sparsity(masks, previous)
    assert sparsity["fc1"].item() == pytest.approx((0.5 + 0.25) / 2)  # units 2, 3 free
    assert sparsity["fc2"].item() == 0.0  # nothing free: 0, the most plasticity
    first = layer_network_sparsity(masks, {k: torch.zeros_like(v) for k, v in previous.items()})
    assert first["fc1"].item() == pytest.approx((0.9 + 0.3 + 0.5 + 0.25) / 4)  # task 1: the mean mask


# ---- Eq. 9: the adjustment rate -----------------------------------------------------------------------
def test_rate_is_eq9_on_hand_made_importances():
    importance = torch.tensor(IMPORTANCE["fc2.weight"], dtype=torch.float)
    # alpha 0.3, epsilon 0.1, R 0.2: r = 0.3 / 0.3 = 1, so a* = 1 / (I + 1)
    rate = adahat_adjustment_rate(importance, torch.tensor(0.2), alpha=0.3, epsilon=0.1)
    torch.testing.assert_close(rate, torch.tensor([[1 / 3, 1 / 2, 1 / 2, 1.0], [1 / 2, 1 / 2, 1 / 2, 1.0]]))
    # R 0.5: r = 0.3 / 0.6 = 0.5, a* = 0.5 / (I + 0.5)
    rate = adahat_adjustment_rate(importance, 0.5, alpha=0.3, epsilon=0.1)
    torch.testing.assert_close(rate, torch.tensor([[0.2, 1 / 3, 1 / 3, 1.0], [1 / 3, 1 / 3, 1 / 3, 1.0]]))


def test_rate_limits():
    counts = torch.arange(0.0, 8.0)  # importance 0 .. 7 (number of tasks relying on a parameter)
    for alpha, epsilon, sparsity in ((1e-6, 0.1, 0.7), (0.3, 0.1, 0.0), (5.0, 1e-3, 1.0)):
        rate = adahat_adjustment_rate(counts, sparsity, alpha, epsilon)
        assert rate[0].item() == 1.0  # never used by an earlier task: free, exactly
        assert bool((rate[1:] < rate[:-1]).all())  # strictly less free with every task relying on it
    # many tasks relying on it: a* ~ r / I
    r = 0.3 / (0.1 + 0.2)
    big = torch.tensor([1e6], dtype=torch.float64)
    assert (adahat_adjustment_rate(big, 0.2, 0.3, 0.1) * big).item() == pytest.approx(r, rel=1e-5)
    # the more of a layer's free units the task claims (R up), the stronger the protection
    crowded, roomy = (adahat_adjustment_rate(counts[1:], sparsity, 0.3, 0.1) for sparsity in (0.9, 0.1))
    assert bool((crowded < roomy).all())
    # alpha -> 0: HAT's Eq. 2 (frozen where I > 0); alpha -> inf: no constraint (hat_const_1)
    assert adahat_adjustment_rate(counts, 0.5, 1e-12, 0.1)[1:].max().item() < 1e-10
    assert adahat_adjustment_rate(counts, 0.5, 1e12, 0.1).min().item() == pytest.approx(1.0)


def test_options_are_checked():
    backbone = tiny_mlp()
    for bad in ({"adjustment_intensity": 0.0}, {"epsilon": -0.1}, {"adjustment_intensity": float("inf")}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            make_adahat(backbone, **bad)
    assert AdaHAT.config_problems({"epsilon": 0.0})  # the pre-flight check sees it too
    assert not AdaHAT.config_problems({"adjustment_intensity": 1e-6, "epsilon": 0.1})


def test_weight_decay_is_refused():
    algorithm = make_adahat(tiny_mlp(), optimizer=functools.partial(torch.optim.Adam, weight_decay=1e-4))
    algorithm.setup_task(0, 2)
    with pytest.raises(ValueError, match="weight_decay=0"):
        algorithm.configure_optimizers()


# ---- Eq. 8 through the real training step -----------------------------------------------------------
def test_a_training_step_multiplies_each_gradient_by_its_rate():
    alpha, epsilon = 0.05, 0.1
    algorithm = with_two_tasks_done(adjustment_intensity=alpha, epsilon=epsilon)
    backbone = algorithm.backbone
    fc1, fc2 = backbone.fcs
    parameters = {
        "fc1.weight": fc1.weight,
        "fc1.bias": fc1.bias,
        "fc2.weight": fc2.weight,
        "fc2.bias": fc2.bias,
    }
    seen = []
    original = algorithm.adjust_gradients

    def recording(masks=None):
        raw = {k: p.grad.clone() for k, p in parameters.items()}
        original(masks)
        seen.append(
            (
                {k: m.detach().clone() for k, m in masks.items()},
                raw,
                {k: p.grad.clone() for k, p in parameters.items()},
            )
        )

    algorithm.adjust_gradients = recording
    before = {k: p.detach().clone() for k, p in parameters.items()}
    batches = Batches([(torch.randn(8, 3), torch.randint(0, 2, (8,)), 2)])
    quiet_trainer().fit(algorithm, train_dataloaders=batches)

    assert len(seen) == 1
    masks, raw, adjusted = seen[0]
    free = {"fc1": torch.tensor([0.0, 0.0, 0.0, 1.0]), "fc2": torch.tensor([0.0, 0.0])}  # 1 - a^{<3}
    for key in parameters:
        layer = key.split(".")[0]
        # R_l of this batch's training mask, and Eq. 9, by hand
        sparsity = (masks[layer] * free[layer]).sum() / max(free[layer].sum().item(), 1.0)
        r = alpha / (epsilon + sparsity)
        importance = torch.tensor(IMPORTANCE[key], dtype=torch.float)
        torch.testing.assert_close(adjusted[key], raw[key] * (r / (importance + r)), rtol=1e-6, atol=0)
        unused = importance == 0  # rate 1: the gradient is untouched, bit for bit
        assert torch.equal(adjusted[key][unused], raw[key][unused])
        # SGD(lr=1), no momentum: the step moved each parameter by exactly its adjusted gradient
        torch.testing.assert_close(parameters[key].detach(), before[key] - adjusted[key], rtol=0, atol=1e-7)
    assert sparsity.item() == 0.0  # fc2 has no free unit: r = alpha / epsilon, the most plasticity


def test_capacity_is_the_mean_eq9_rate_with_the_tasks_summative_mask():
    algorithm = with_two_tasks_done(adjustment_intensity=0.6, epsilon=0.1)
    # after task 2: R_fc1 = 1/2 (task 2 claims unit 2 of free units 2, 3), R_fc2 = 1 (unit 1 of {1})
    # r_fc1 = 0.6 / 0.6 = 1: a* = 1/(I+1); r_fc2 = 0.6 / 1.1 = 6/11: a* = 6/(11 I + 6)
    fc1 = lambda i: Fraction(1, i + 1)  # noqa: E731
    fc2 = lambda i: Fraction(6, 11 * i + 6)  # noqa: E731
    rates = [fc1(i) for row in IMPORTANCE["fc1.weight"] for i in row]
    rates += [fc1(i) for i in IMPORTANCE["fc1.bias"]]
    rates += [fc2(i) for row in IMPORTANCE["fc2.weight"] for i in row]
    rates += [fc2(i) for i in IMPORTANCE["fc2.bias"]]
    expected = float(sum(rates) / len(rates))
    assert algorithm.capacity_after_task(1).item() == pytest.approx(expected, rel=1e-6)
    assert algorithm.on_task_end(1)["capacity"] == pytest.approx(expected, rel=1e-6)
    # HAT's signature (HATMaskPlots): no argument, the last stored task; a binary cumulative mask
    # counts each used unit once, an upper bound
    assert algorithm.network_capacity().item() == algorithm.capacity_after_task(1).item()
    assert algorithm.network_capacity(algorithm.backbone.cumulative_mask()).item() > expected
    # after task 1 alone: importance = task 1's mask, R from task 1's mask (no earlier task)
    assert 0 < algorithm.capacity_after_task(0).item() < 1
    assert algorithm.capacity_after_task(0).item() > algorithm.capacity_after_task(1).item()


def test_hat_mask_plots_draw_for_adahat(tmp_path):
    from clcore.callbacks.hat_masks import HATMaskPlots

    paths = HATMaskPlots().draw(with_two_tasks_done(), 1, tmp_path)
    assert [p.name for p in paths] == ["masks_after_task_2.png", "capacity.png"]


def test_task_1_trains_exactly_as_hat():
    """No earlier task: every rate is r / (0 + r) = 1, so AdaHAT's task 1 is HAT's, bit for bit."""
    states = []
    for cls in (HAT, AdaHAT):
        torch.manual_seed(0)
        backbone = tiny_mlp()
        algorithm = cls(backbone, HeadsTIL(2), SGD, num_tasks=3, mask_sparsity_reg_factor=0.75)
        algorithm.setup_task(0, 2)
        torch.manual_seed(1)
        batches = Batches([(torch.randn(8, 3), torch.randint(0, 2, (8,)), 0) for _ in range(3)])
        quiet_trainer().fit(algorithm, train_dataloaders=batches)
        states.append(algorithm.state_dict())
    assert states[0].keys() == states[1].keys()
    tensors = [k for k, v in states[0].items() if isinstance(v, torch.Tensor)]
    assert "backbone.fcs.0.weight" in tensors
    assert all(torch.equal(states[0][k], states[1][k]) for k in tensors)


# ---- resume: the summative mask comes back with the backbone's stored masks --------------------------
def test_resumes_exactly_after_a_crash_mid_task(make_config):
    """Crash in task 3, which trains with the summative mask of tasks 1-2; run the same config again."""
    overrides = (
        "benchmark.num_tasks=3",
        "algorithm=adahat",
        "backbone=hat_mlp",
        "algorithm.adjustment_intensity=0.01",
    )
    reference, resumed = crash_and_resume(make_config, *overrides)
    assert resumed.extra["capacity"] == reference.extra["capacity"]


# ---- end to end -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_end_to_end_adahat_on_the_hat_mlp(make_config):
    common = ("benchmark.num_tasks=3", "backbone=hat_mlp", "algorithm.mask_sparsity_reg_factor=0.75")
    hat = run_sequence(make_config(*common, "algorithm=hat", subdir="hat"))
    ada = run_sequence(
        make_config(*common, "algorithm=adahat", "algorithm.adjustment_intensity=0.01", subdir="ada")
    )
    acc = ada.acc_matrix
    upper = torch.ones(3, 3, dtype=torch.bool).triu(1)
    assert torch.isnan(acc[upper]).all() and torch.isfinite(acc[~upper]).all()
    assert acc.diagonal().min().item() > 0.2  # 10 classes a task: chance is 0.1
    assert acc[0, 0].item() == hat.acc_matrix[0, 0].item()  # task 1: exactly HAT
    capacity = ada.extra["capacity"]
    assert len(capacity) == 3 and all(0 < c <= 1 for c in capacity)
    assert capacity[0] > capacity[2]  # the summative mask only grows
    # unlike HAT, an earlier task's accuracy may move (a little) as later tasks train
    assert (hat.acc_matrix[:, 0] == hat.acc_matrix[0, 0]).all()
