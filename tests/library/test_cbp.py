"""CBP, Continual Backpropagation (Dohare et al., Nature 2024): Eq. 1 and Algorithm 1 on tiny networks.

The utilities are written out by hand from Eq. 1, not recomputed by the code under test; a
replacement is checked unit by unit (which unit, its new incoming weights, its zero outgoing
weights, the optimiser's moments) and on the network's outputs; then short runs end to end.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn

from clcore.algorithms.cbp import CBP, hidden_layers
from clcore.backbones.mlp import MLP
from clcore.backbones.resnet import ResNet18
from clcore.clrun import run_sequence
from clcore.config_rules import ConfigError
from clcore.heads.cil import HeadsCIL
from clcore.heads.dil import HeadDIL
from clcore.heads.til import HeadsTIL
from tests.helpers import FailInTask

HEADS = {"til": HeadsTIL, "cil": HeadsCIL, "dil": HeadDIL}


def make_cbp(input_dim, hidden_dims, output_dim, paradigm="til", tasks=1, classes=2, **options) -> CBP:
    backbone = MLP(input_dim, hidden_dims, output_dim)
    optimizer = functools.partial(torch.optim.Adam, lr=0.1)
    algorithm = CBP(backbone, HEADS[paradigm](output_dim), optimizer, num_tasks=3, **options)
    for task_id in range(tasks):
        algorithm.setup_task(task_id, classes)
    return algorithm


def set_linear(layer: nn.Linear, weight, bias=None) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias) if bias is not None else torch.zeros_like(layer.bias))


# ---- Eq. 1: the contribution utility -------------------------------------------------------------------
def test_utility_after_one_and_two_steps_matches_the_hand_computation():
    # 2 inputs -> 3 hidden units -> 2 feature units (the last hidden layer) -> task head of 2 outputs
    algorithm = make_cbp(2, (3,), 2, decay_rate=0.9)
    first, second = hidden_layers(algorithm.backbone)
    set_linear(first.incoming, [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    set_linear(second.incoming, [[1.0, 2.0, 0.5], [0.0, 1.0, -1.0]])
    head = algorithm.heads.heads[0]
    set_linear(head, [[1.0, -1.0], [2.0, 0.5]])
    algorithm.start_recording()

    # step 1, x = [[1, 2], [3, -4]]
    #   layer 1: h = relu([[1, 2, 3], [3, -4, -1]]) = [[1, 2, 3], [3, 0, 0]], mean |h| = [2, 1, 1.5]
    #            outgoing |w| summed per unit (columns of layer 2) = [1, 3, 1.5]
    #            u = 0.1 * [2, 3, 2.25] = [0.2, 0.3, 0.225]
    #   layer 2: h = relu([[6.5, -1], [3, 0]]), mean |h| = [4.75, 0]; head columns [3, 1.5]
    #            u = 0.1 * [14.25, 0] = [1.425, 0]
    algorithm(torch.tensor([[1.0, 2.0], [3.0, -4.0]]), 0)
    algorithm.eval()  # a validation forward in between is not recorded
    algorithm(torch.tensor([[5.0, 5.0]]), 0)
    algorithm.train()
    algorithm.update_utilities_and_ages()
    torch.testing.assert_close(algorithm.utility(0), torch.tensor([0.2, 0.3, 0.225]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(algorithm.utility(1), torch.tensor([1.425, 0.0]), rtol=1e-6, atol=1e-7)
    assert [age.tolist() for age in algorithm.ages] == [[1, 1, 1], [1, 1]]

    # step 2, x = [[0, 1], [1, 0]], after the head's first weight became 2 (columns now [4, 1.5])
    #   layer 1: h = [[0, 1, 1], [1, 0, 1]], mean |h| = [0.5, 0.5, 1], contribution [0.5, 1.5, 1.5]
    #            u = 0.9 * [0.2, 0.3, 0.225] + 0.1 * [0.5, 1.5, 1.5] = [0.23, 0.42, 0.3525]
    #   layer 2: h = relu([[2.5, 0], [1.5, -1]]), mean |h| = [2, 0], contribution [8, 0]
    #            u = 0.9 * [1.425, 0] + 0.1 * [8, 0] = [2.0825, 0]
    with torch.no_grad():
        head.weight[0, 0] = 2.0
    algorithm(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), 0)
    algorithm.update_utilities_and_ages()
    torch.testing.assert_close(algorithm.utility(0), torch.tensor([0.23, 0.42, 0.3525]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(algorithm.utility(1), torch.tensor([2.0825, 0.0]), rtol=1e-6, atol=1e-7)
    assert [age.tolist() for age in algorithm.ages] == [[2, 2, 2], [2, 2]]
    algorithm.stop_recording()


@pytest.mark.parametrize(("paradigm", "expected"), [("til", [1]), ("cil", [0, 1]), ("dil", [0])])
def test_the_last_layers_outgoing_weights_are_the_current_tasks_output_layer(paradigm, expected):
    algorithm = make_cbp(3, (4,), 2, paradigm=paradigm, tasks=2)
    linears = {"til": lambda h: list(h.heads), "cil": lambda h: list(h.blocks), "dil": lambda h: [h.head]}
    heads = linears[paradigm](algorithm.heads)
    assert algorithm.output_layers(1) == [heads[i] for i in expected]


# ---- Algorithm 1: the replacement -----------------------------------------------------------------------
def prepared_for_replacement(layer_index: int):
    """A TIL network with two task heads where unit 4 of ``layer_index`` is the lowest-utility mature
    unit and dead on the batch (so removing it changes no output); unit 3 is lower still but immature."""
    torch.manual_seed(0)
    algorithm = make_cbp(4, (6,), 6, tasks=2, replacement_rate=0.2, maturity_threshold=2, decay_rate=0.5)
    layer = algorithm.layers[layer_index]
    with torch.no_grad():
        layer.incoming.bias[4] = -100.0  # inputs are ~N(0, 1): h = relu(< 0) = 0 on the batch
        algorithm.utility(layer_index).copy_(torch.tensor([0.9, 0.8, 0.7, 0.01, 0.05, 0.6]))
    algorithm.ages[layer_index][:] = torch.tensor([5, 5, 5, 0, 5, 5])  # unit 3 is immature (age <= 2)
    x = torch.randn(8, 4)
    return algorithm, layer, x


@pytest.mark.parametrize("layer_index", [0, 1])  # a layer before another one, and the one before the heads
def test_replacement_takes_the_lowest_utility_mature_unit_and_leaves_the_outputs_unchanged(layer_index):
    algorithm, layer, x = prepared_for_replacement(layer_index)
    algorithm.eval()
    up_to_the_layer = algorithm.backbone.layers[: 3 + 2 * layer_index]  # Flatten, (Linear, ReLU) x (l + 1)
    with torch.no_grad():
        before = [algorithm(x, task_id) for task_id in (0, 1)]
        assert torch.equal(up_to_the_layer(x)[:, 4], torch.zeros(8))  # unit 4 is dead on the batch
    incoming_before = layer.incoming.weight.detach().clone()
    bias_before = layer.incoming.bias.detach().clone()
    consumers = [layer.outgoing] if layer.outgoing is not None else list(algorithm.heads.heads)
    outgoing_before = [c.weight.detach().clone() for c in consumers]

    torch.manual_seed(2)
    fresh = nn.Linear(4 if layer_index == 0 else 6, 1)  # what nn.Linear draws for a new unit
    torch.manual_seed(2)
    replaced = algorithm.replace_due_units()

    # 5 mature units * 0.2 = 1 unit due: unit 4, not the immature unit 3 of lower utility
    assert [r.tolist() for r in replaced] == [[4] if i == layer_index else [] for i in range(2)]
    weight = layer.incoming.weight.detach()
    assert torch.equal(weight[4], fresh.weight[0].detach())
    assert layer.incoming.bias[4] == fresh.bias[0]
    assert not torch.equal(weight[4], incoming_before[4])
    keep = [0, 1, 2, 3, 5]
    assert torch.equal(weight[keep], incoming_before[keep])
    assert torch.equal(layer.incoming.bias.detach()[keep], bias_before[keep])
    for consumer, old in zip(consumers, outgoing_before, strict=True):  # every TIL head for the features
        assert torch.equal(consumer.weight[:, 4], torch.zeros(consumer.out_features))
        assert torch.equal(consumer.weight.detach()[:, keep], old[:, keep])
    assert algorithm.utility(layer_index)[4] == 0 and algorithm.ages[layer_index][4] == 0
    assert algorithm.utility(layer_index)[3] == pytest.approx(0.01)  # the immature unit is untouched
    assert algorithm.replaced_this_task[layer_index] == 1
    assert algorithm.units_due[layer_index] == pytest.approx(0.0, abs=1e-12)
    # the new unit fires on the batch (with its old bias it could not), yet no output changed:
    # its outgoing weights are zero, and the unit it replaced contributed nothing here
    with torch.no_grad():
        after = [algorithm(x, task_id) for task_id in (0, 1)]
        assert (up_to_the_layer(x)[:, 4] > 0).any()
    for old, new in zip(before, after, strict=True):
        assert torch.equal(old, new)


def test_immature_units_are_never_replaced():
    algorithm = make_cbp(3, (5,), 4, replacement_rate=1.0, maturity_threshold=3)
    with torch.no_grad():
        algorithm.utility(0).copy_(torch.tensor([0.0, 0.1, 0.2, 0.3, 9.0]))
    # every unit at the maturity threshold: none is mature, none goes, however many are "due"
    for age in range(4):
        for ages in algorithm.ages:
            ages.fill_(age)
        assert all(len(r) == 0 for r in algorithm.replace_due_units())
    # one unit matures, the one of highest utility: it alone can go, the lower ones are younger
    algorithm.ages[0][4] = 4
    replaced = algorithm.replace_due_units()
    assert replaced[0].tolist() == [4] and sum(algorithm.replaced_this_task) == 1


def test_the_optimizer_moments_of_the_replaced_weights_are_reset():
    algorithm, layer, x = prepared_for_replacement(0)
    optimizer = torch.optim.Adam(algorithm.parameters(), lr=1e-3)
    for _ in range(2):  # real steps: every moment of the weights used is non-zero
        optimizer.zero_grad()
        algorithm(x, 1).square().mean().backward()
        optimizer.step()
    with torch.no_grad():
        layer.incoming.bias[4] = 0.5  # let the gradient reach unit 4, so that its moments are non-zero too
    optimizer.zero_grad()
    algorithm(x, 1).square().mean().backward()
    optimizer.step()
    tracked = {
        "incoming": (layer.incoming.weight, 0),
        "bias": (layer.incoming.bias, 0),
        "outgoing": (layer.outgoing.weight, 1),
    }
    before = {
        name: {key: optimizer.state[p][key].clone() for key in ("exp_avg", "exp_avg_sq")}
        for name, (p, _) in tracked.items()
    }
    assert all(
        before[name]["exp_avg_sq"].select(dim, 4).abs().sum() > 0 for name, (_, dim) in tracked.items()
    )

    replaced = algorithm.replace_due_units([optimizer])
    assert replaced[0].tolist() == [4]
    for name, (parameter, dim) in tracked.items():
        for key in ("exp_avg", "exp_avg_sq"):
            moment = optimizer.state[parameter][key]
            assert torch.equal(moment.select(dim, 4), torch.zeros_like(moment.select(dim, 4))), (name, key)
            others = [i for i in range(moment.shape[dim]) if i != 4]
            assert torch.equal(
                moment.index_select(dim, torch.tensor(others)),
                before[name][key].index_select(dim, torch.tensor(others)),
            )
    # the gradients still held there are dropped too (with gradient accumulation they would be stepped)
    assert torch.equal(layer.incoming.weight.grad[4], torch.zeros(4)) and layer.incoming.bias.grad[4] == 0
    assert torch.equal(layer.outgoing.weight.grad[:, 4], torch.zeros(6))


# ---- the rules ------------------------------------------------------------------------------------------
def test_options_and_backbone_are_checked_with_every_problem_at_once():
    problems = CBP.config_problems(
        {"replacement_rate": 1.5, "decay_rate": 1.0, "maturity_threshold": -1}, backbone_type=ResNet18
    )
    assert len(problems) == 4
    assert "backbone ResNet18 is not supported" in problems[0] and "backbone=mlp" in problems[0]
    assert CBP.config_problems({}, paradigm="cil", backbone_type=MLP) == []
    with pytest.raises(ConfigError, match="algorithm.decay_rate"):
        make_cbp(3, (4,), 2, decay_rate=-0.1)


# ---- end to end -----------------------------------------------------------------------------------------
# Short tasks (~40 steps): a higher rate and a lower threshold than the paper's, so that units are replaced.
ACTIVE = ("algorithm=cbp", "algorithm.replacement_rate=0.01", "algorithm.maturity_threshold=5")


def test_a_crash_mid_task_resumes_to_the_same_accuracy_matrix(make_config):
    """Crash in task 2: the resumed run needs task 1's utilities (buffers), ages and counters (cl_state)."""
    overrides = (*ACTIVE, "benchmark.num_tasks=2", "backbone.dropout=0.2")
    reference = run_sequence(make_config(*overrides, subdir="reference"))
    cfg = make_config(*overrides, subdir="crashed")
    with pytest.raises(RuntimeError, match="simulated crash in task 2"):
        run_sequence(cfg, extra_callbacks=[FailInTask(task=2)])
    saved = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "task_1.ckpt", weights_only=True)
    assert saved["cl_state"]["ages"][0].max() > 5 and "utility_0" in saved["state_dict"]
    resumed = run_sequence(cfg)
    torch.testing.assert_close(resumed.acc_matrix, reference.acc_matrix, rtol=0, atol=0, equal_nan=True)
    assert resumed.extra["units_replaced"] == reference.extra["units_replaced"]
    assert min(reference.extra["units_replaced"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("paradigm", ["til", "cil", "dil"])
def test_cbp_runs_in_every_paradigm(make_config, paradigm):
    results = run_sequence(make_config(*ACTIVE, f"paradigm={paradigm}", "benchmark.num_tasks=2"))
    assert results.tasks_done == 2 and torch.isfinite(results.acc_matrix.tril()).all()
    assert results.acc_matrix[-1, -1] > 0.5  # the last task is learned
    replaced = results.extra["units_replaced"]
    assert all(count > 0 for count in replaced)
    per_layer = [results.extra[f"units_replaced_layer_{i}"] for i in (1, 2, 3)]  # backbone=mlp: 256-100-64
    assert [sum(task) for task in zip(*per_layer, strict=True)] == replaced
