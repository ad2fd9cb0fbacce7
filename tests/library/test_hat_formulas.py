"""HAT against its equations (Serra et al., ICML 2018; AdaHAT, Wang et al. 2024) on tiny networks.

Masks are set by hand through the task embeddings (+1 -> unit kept, -1 -> unit masked), so every
expected value below is written out from the formula, not recomputed by the code under test.
"""

from __future__ import annotations

import functools
import math

import lightning as L
import pytest
import torch

from clcore.algorithms.hat import (
    HAT,
    adjustment_rate,
    annealed_s,
    embedding_gradient_compensation,
    mask_sparsity_regulariser,
)
from clcore.backbones.hat_mlp import HATMaskMLP
from clcore.backbones.hat_resnet import HATMaskResNet18
from clcore.backbones.mlp import MLP
from clcore.heads.cil import HeadsCIL
from clcore.heads.til import HeadsTIL
from tests.helpers import Batches, quiet_trainer


def make_hat(backbone, **kwargs) -> HAT:
    optimizer = kwargs.pop("optimizer", functools.partial(torch.optim.SGD, lr=0.1))
    return HAT(backbone, HeadsTIL(backbone.output_dim), optimizer, num_tasks=backbone.num_tasks, **kwargs)


def set_binary_masks(backbone, task_id: int, kept: dict[str, list[int]]) -> None:
    """Embedding +1 for the units listed as kept (1) and -1 for the others (0)."""
    with torch.no_grad():
        for name, pattern in kept.items():
            backbone.gates[name].embeddings[task_id].copy_(torch.tensor(pattern, dtype=torch.float) * 2 - 1)


def tiny_mlp(num_tasks: int = 2) -> HATMaskMLP:
    # 3 inputs -> fc1 (4 units) -> fc2 (2 units, the features)
    return HATMaskMLP(3, (4,), 2, num_tasks=num_tasks)


def trainer(**kwargs) -> L.Trainer:
    return quiet_trainer(**kwargs)


# ---- annealing (Sec. 2.4) -----------------------------------------------------------------------
def test_anneal_runs_from_one_over_s_max_to_s_max():
    assert annealed_s(0, 10, 400.0) == pytest.approx(1 / 400)
    assert annealed_s(9, 10, 400.0) == pytest.approx(400.0)
    # b = 1 of B = 3: 1/400 + (400 - 1/400) / 2
    assert annealed_s(1, 3, 400.0) == pytest.approx(0.0025 + 399.9975 / 2)
    assert annealed_s(0, 1, 400.0) == 400.0  # a single batch trains at s_max
    assert all(annealed_s(b, 7, 25.0) > 0 for b in range(7))  # never the off-by-one negative s


def test_training_uses_annealed_s_per_batch_and_s_max_or_binary_masks_at_eval():
    torch.manual_seed(0)
    backbone = tiny_mlp()
    algorithm = make_hat(backbone)
    calls: list[tuple[str, float | None]] = []
    original_mask = backbone.mask

    def recording_mask(task_id, mode, s=None):
        calls.append((mode, s))
        return original_mask(task_id, mode, s)

    backbone.mask = recording_mask
    batches = Batches([(torch.randn(4, 3), torch.randint(0, 2, (4,)), 0) for _ in range(3)])
    algorithm.setup_task(0, 2)
    fit_trainer = trainer(num_sanity_val_steps=1)
    fit_trainer.fit(algorithm, train_dataloaders=batches, val_dataloaders=Batches(batches.batches[:1]))
    # sanity validation (s_max), three annealed training batches, then the epoch's validation
    assert calls[0] == ("val", 400.0)
    assert [mode for mode, _ in calls[1:4]] == ["train"] * 3
    assert [s for _, s in calls[1:4]] == pytest.approx([1 / 400, 1 / 400 + (400 - 1 / 400) / 2, 400.0])
    assert calls[4:] == [("val", 400.0)]
    calls.clear()
    fit_trainer.test(algorithm, dataloaders=Batches(batches.batches[:1]))
    assert calls == [("test", None)]


# ---- masks (Sec. 2.2-2.3) -----------------------------------------------------------------------
def test_mask_modes_train_val_test():
    backbone = tiny_mlp()
    with torch.no_grad():
        backbone.gates["fc1"].embeddings[0].copy_(torch.tensor([0.01, -0.02, 2.0, -3.0]))
    s = 10.0
    assert torch.allclose(
        backbone.mask(0, "train", s)["fc1"], torch.sigmoid(torch.tensor([0.1, -0.2, 20.0, -30.0]))
    )
    assert torch.allclose(
        backbone.mask(0, "val", 400.0)["fc1"], torch.sigmoid(torch.tensor([4.0, -8.0, 800.0, -1200.0]))
    )
    # not stored yet: the same rule on the live embedding
    assert backbone.mask(0, "test")["fc1"].tolist() == [1.0, 0.0, 1.0, 0.0]
    backbone.store_mask(0)
    with torch.no_grad():
        backbone.gates["fc1"].embeddings[0].fill_(-1.0)
    assert backbone.mask(0, "test")["fc1"].tolist() == [
        1.0,
        0.0,
        1.0,
        0.0,
    ]  # the stored mask, not the live one
    with pytest.raises(ValueError, match="needs the gate scale"):
        backbone.mask(0, "train")


def test_store_mask_builds_the_cumulative_mask_as_a_max():
    backbone = tiny_mlp(num_tasks=3)
    set_binary_masks(backbone, 0, {"fc1": [1, 0, 1, 0], "fc2": [1, 0]})
    set_binary_masks(backbone, 1, {"fc1": [0, 0, 1, 1], "fc2": [0, 0]})
    assert backbone.previous_cumulative_mask(0)["fc1"].tolist() == [0, 0, 0, 0]
    backbone.store_mask(0)
    assert backbone.cumulative_mask()["fc1"].tolist() == [1, 0, 1, 0]
    backbone.store_mask(1)
    backbone.store_mask(1)  # idempotent
    assert backbone.cumulative_mask()["fc1"].tolist() == [1, 0, 1, 1]
    assert backbone.cumulative_mask()["fc2"].tolist() == [1, 0]
    assert backbone.previous_cumulative_mask(1)["fc1"].tolist() == [1, 0, 1, 0]  # a^{<2}: task 1 only
    assert backbone.previous_cumulative_mask(2)["fc1"].tolist() == [1, 0, 1, 1]
    assert backbone.task_mask_stored.tolist() == [True, True, False]

    reloaded = tiny_mlp(num_tasks=3)
    reloaded.load_state_dict(backbone.state_dict())  # fixed-size buffers: loads as is
    assert reloaded.test_mask(0)["fc1"].tolist() == [1, 0, 1, 0]
    assert reloaded.cumulative_mask()["fc1"].tolist() == [1, 0, 1, 1]
    assert reloaded.task_mask_stored.tolist() == [True, True, False]


@pytest.mark.parametrize(
    "mode, low, high", [("N01", -math.inf, math.inf), ("U-11", -1, 1), ("U01", 0, 1), ("U-10", -1, 0)]
)
def test_embedding_init_ranges(mode, low, high):
    torch.manual_seed(0)
    backbone = HATMaskMLP(3, (200,), 100, num_tasks=2)
    backbone.initialise_task_embedding(1, mode)
    values = torch.cat([e.detach() for e in backbone.embedding_parameters(1)])
    assert values.min() >= low and values.max() <= high
    if mode == "N01":
        assert abs(values.mean().item()) < 0.2 and abs(values.std().item() - 1) < 0.2
    else:
        assert values.std() > 0.1  # spread over the interval, not a constant


def test_embedding_init_last_copies_the_previous_task():
    backbone = tiny_mlp(num_tasks=2)
    backbone.initialise_task_embedding(1, "last")
    for name, gate in backbone.gates.items():
        assert torch.equal(gate.embeddings[1], gate.embeddings[0]), name


def test_setup_task_initialises_only_untrained_tasks():
    backbone = tiny_mlp()
    algorithm = make_hat(backbone, embedding_init="U01")
    algorithm.setup_task(0, 2)
    assert all(e.min() >= 0 for e in backbone.embedding_parameters(0))
    set_binary_masks(backbone, 0, {"fc1": [1, 0, 1, 0], "fc2": [1, 0]})
    backbone.store_mask(0)
    before = [e.detach().clone() for e in backbone.embedding_parameters(0)]
    algorithm.setup_task(0, 2)  # e.g. a resumed run setting up a finished task again
    assert all(torch.equal(a, b) for a, b in zip(before, backbone.embedding_parameters(0)))


# ---- gradient adjustment (Sec. 2.3, Eq. 2) --------------------------------------------------------
def test_eq2_multipliers_linear_layers():
    torch.manual_seed(0)
    backbone = tiny_mlp()
    algorithm = make_hat(backbone)
    set_binary_masks(backbone, 0, {"fc1": [1, 0, 1, 0], "fc2": [1, 0]})
    backbone.store_mask(0)
    algorithm.setup_task(0, 2)
    algorithm.setup_task(1, 2)
    fc1, fc2 = backbone.fcs
    raw = {p: torch.randn_like(p) for p in (fc1.weight, fc1.bias, fc2.weight, fc2.bias)}
    for p, g in raw.items():
        p.grad = g.clone()
    algorithm.on_train_start()  # caches Eq. 2's rates for the task being trained (task 2)
    algorithm.adjust_gradients()
    # fc1 reads the input (no mask): 1 - a_{1,i}; its rows for units 0 and 2 freeze.
    expected_fc1 = torch.tensor([[0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3])
    # fc2: 1 - min(a_{2,i}, a_{1,j}); unit 0 of fc2 kept, input units 0 and 2 kept.
    expected_fc2 = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert torch.equal(fc1.weight.grad, raw[fc1.weight] * expected_fc1)
    assert torch.equal(fc1.bias.grad, raw[fc1.bias] * torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert torch.equal(fc2.weight.grad, raw[fc2.weight] * expected_fc2)
    assert torch.equal(fc2.bias.grad, raw[fc2.bias] * torch.tensor([0.0, 1.0]))


def tiny_resnet(num_tasks: int = 2) -> HATMaskResNet18:
    # base_width 2: stages of 2, 4, 8, 16 channels, 1 input channel
    return HATMaskResNet18(1, num_tasks=num_tasks, base_width=2)


def test_eq2_multipliers_conv_layers_with_residual_inputs():
    torch.manual_seed(0)
    backbone = tiny_resnet()
    algorithm = make_hat(backbone)
    kept = {name: [0] * units for name, units in backbone.num_units.items()}
    kept |= {
        "conv1": [1, 0],  # stem, reads the image
        "layer1_0_conv1": [0, 1],
        "layer1_0_conv2": [0, 1],
        "layer1_1_conv1": [1, 1],
        "layer1_1_conv2": [0, 0],
        "layer2_0_conv1": [1, 0, 0, 1],
        "layer2_0_downsample": [0, 1, 1, 0],
    }
    set_binary_masks(backbone, 0, kept)
    backbone.store_mask(0)
    algorithm.setup_task(0, 2)
    algorithm.setup_task(1, 2)
    layers = backbone.masked_layers
    for layer in layers.values():
        layer.weight.grad = torch.ones_like(layer.weight)
    algorithm.on_train_start()  # caches Eq. 2's rates for the task being trained (task 2)
    algorithm.adjust_gradients()

    def multiplier(name):  # per (out, in) channel pair: equal over the kernel window
        grad = layers[name].weight.grad
        assert torch.equal(grad, grad[:, :, :1, :1].expand_as(grad))
        return grad[:, :, 0, 0]

    # stem: the image has no mask, 1 - a_out
    assert multiplier("conv1").tolist() == [[0.0], [1.0]]
    # layer1_0_conv1 reads the stem's output [1, 0]: 1 - min(a_out, a_in)
    assert multiplier("layer1_0_conv1").tolist() == [[1.0, 1.0], [0.0, 1.0]]
    # conv2 reads conv1 of its block [0, 1]
    assert multiplier("layer1_0_conv2").tolist() == [[1.0, 1.0], [1.0, 0.0]]
    # layer1_1 reads relu(branch + identity): max(a_layer1_0_conv2, a_stem) = max([0,1],[1,0]) = [1, 1]
    assert multiplier("layer1_1_conv1").tolist() == [[0.0, 0.0], [0.0, 0.0]]
    # layer2_0 reads layer1_1's output: max(a_layer1_1_conv2, its input) = max([0,0],[1,1]) = [1, 1]
    assert multiplier("layer2_0_conv1").tolist() == [[0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    assert multiplier("layer2_0_downsample").tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    # layer2_0_conv2 reads layer2_0_conv1 [1,0,0,1]; its own units are all free: nothing frozen
    assert multiplier("layer2_0_conv2").eq(1).all()


def test_parameter_measures_aggregations():
    backbone = tiny_mlp()
    unit = {"fc1": torch.tensor([0.2, 0.4, 0.6, 0.8]), "fc2": torch.tensor([0.0, 1.0])}
    for aggregation, expected_row in [
        ("min", [[0.0] * 4, [0.2, 0.4, 0.6, 0.8]]),
        ("max", [[0.2, 0.4, 0.6, 0.8], [1.0] * 4]),
        ("mean", [[0.1, 0.2, 0.3, 0.4], [0.6, 0.7, 0.8, 0.9]]),
    ]:
        measures = backbone.parameter_measures(unit, aggregation)
        assert torch.allclose(measures["fc2"][0], torch.tensor(expected_row))
        assert torch.equal(measures["fc1"][0], unit["fc1"][:, None].expand(4, 3))  # first layer: own mask
        assert torch.equal(measures["fc2"][1], unit["fc2"])


def test_adjustment_modes():
    torch.manual_seed(0)
    mask = (torch.arange(1000) % 2).float()  # alternating masked (1) / free (0)
    masked, free = mask.bool(), ~mask.bool()
    assert torch.equal(adjustment_rate(mask, "hat"), 1 - mask)
    random_rate = adjustment_rate(mask, "hat_random")
    assert random_rate[free].eq(1).all()
    assert random_rate[masked].min() >= 0 and random_rate[masked].max() <= 1
    assert (
        0.4 < random_rate[masked].mean() < 0.6 and random_rate[masked].std() > 0.2
    )  # U[0,1], not a constant
    assert adjustment_rate(mask, "hat_random", expected=True)[masked].eq(0.5).all()
    alpha_rate = adjustment_rate(mask, "hat_const_alpha", alpha=0.3)
    assert torch.allclose(alpha_rate[masked], torch.tensor(0.3)) and alpha_rate[free].eq(1).all()
    assert adjustment_rate(mask, "hat_const_1").eq(1).all()
    with pytest.raises(ValueError):
        adjustment_rate(mask, "nonsense")


def test_adjust_gradients_const_alpha_on_the_network():
    backbone = tiny_mlp()
    algorithm = make_hat(backbone, adjustment_mode="hat_const_alpha", adjustment_alpha=0.25)
    set_binary_masks(backbone, 0, {"fc1": [1, 0, 1, 0], "fc2": [1, 0]})
    backbone.store_mask(0)
    for layer in backbone.masked_layers.values():
        layer.weight.grad = torch.ones_like(layer.weight)
        layer.bias.grad = torch.ones_like(layer.bias)
    algorithm.task_id = 1  # training task 2: task 1's stored mask is the previous cumulative mask
    algorithm.on_train_start()  # caches Eq. 2's rates for the task being trained (task 2)
    algorithm.adjust_gradients()
    assert backbone.fcs[1].weight.grad.tolist() == [[0.25, 1.0, 0.25, 1.0], [1.0, 1.0, 1.0, 1.0]]
    assert backbone.fcs[0].bias.grad.tolist() == [0.25, 1.0, 0.25, 1.0]


# ---- embedding gradient compensation (Sec. 2.5) ---------------------------------------------------
def test_compensation_factor_formula():
    embedding = torch.tensor([-2.0, 0.0, 0.5, 3.0])
    s, s_max = 4.0, 400.0
    factor = embedding_gradient_compensation(embedding, s, s_max, threshold=50.0)
    expected = [s_max / s * (math.cosh(s * e) + 1) / (math.cosh(e) + 1) for e in embedding.tolist()]
    assert torch.allclose(factor, torch.tensor(expected), rtol=1e-5)
    # s e beyond the threshold: cosh is taken at the clamp (+-thr)
    clamped = embedding_gradient_compensation(torch.tensor([1.0, -1.0]), 400.0, 400.0, threshold=50.0)
    assert torch.allclose(clamped, torch.tensor([(math.cosh(50) + 1) / (math.cosh(1) + 1)] * 2), rtol=1e-5)


def test_compensated_gradient_is_that_of_s_max_sigmoid():
    # d/de sigmoid(s e) times the factor = s_max * sigmoid(e) (1 - sigmoid(e)), whatever s (|s e| < thr)
    embedding = torch.tensor([-3.0, -0.5, 0.0, 0.7, 2.0], requires_grad=True)
    s, s_max = 0.37, 400.0
    torch.sigmoid(s * embedding).sum().backward()
    compensated = embedding.grad * embedding_gradient_compensation(embedding.detach(), s, s_max)
    sigma = torch.sigmoid(embedding.detach())
    assert torch.allclose(compensated, s_max * sigma * (1 - sigma), rtol=1e-4)


# ---- sparsity regulariser (Sec. 2.6) -------------------------------------------------------------
def test_regulariser_without_previous_masks_is_the_mean_mask():
    masks = {"a": torch.tensor([0.5, 1.0, 0.2]), "b": torch.tensor([0.4])}
    previous = {"a": torch.zeros(3), "b": torch.zeros(1)}
    assert mask_sparsity_regulariser(masks, previous).item() == pytest.approx((0.5 + 1.0 + 0.2 + 0.4) / 4)
    assert mask_sparsity_regulariser(masks, previous, "cross").item() == pytest.approx(2.1 / 4)


def test_regulariser_with_previous_masks():
    masks = {"a": torch.tensor([0.5, 1.0, 0.2]), "b": torch.tensor([0.4])}
    previous = {"a": torch.tensor([1.0, 0.0, 0.0]), "b": torch.tensor([0.0])}
    # free units: a1, a2, b0 -> (1.0 + 0.2 + 0.4) / 3
    assert mask_sparsity_regulariser(masks, previous).item() == pytest.approx(1.6 / 3)
    # cross adds the overlap with earlier units: a0 -> 0.5 / 1
    assert mask_sparsity_regulariser(masks, previous, "cross").item() == pytest.approx(1.6 / 3 + 0.5)
    everything_used = {"a": torch.ones(3), "b": torch.ones(1)}
    assert mask_sparsity_regulariser(masks, everything_used).item() == 0.0


# ---- capacity and per-task record (AdaHAT Sec. 4.1) ----------------------------------------------
@pytest.mark.parametrize(
    "mode, alpha, expected",
    [
        # 26 parameters; Eq. 2 freezes 11 of them (fc1: 2 rows x 3 + 2 biases, fc2: 2 weights + 1 bias)
        ("hat", None, 15 / 26),
        ("hat_const_alpha", 0.3, (15 + 0.3 * 11) / 26),
        ("hat_random", None, (15 + 0.5 * 11) / 26),
        ("hat_const_1", None, 1.0),
    ],
)
def test_capacity_and_mask_sparsity(mode, alpha, expected):
    backbone = tiny_mlp()
    algorithm = make_hat(backbone, adjustment_mode=mode, adjustment_alpha=alpha)
    algorithm.setup_task(0, 2)
    assert algorithm.network_capacity().item() == 1.0  # nothing used yet
    set_binary_masks(backbone, 0, {"fc1": [1, 0, 1, 0], "fc2": [1, 0]})
    record = algorithm.on_task_end(0)  # stores the mask if training did not
    assert record["capacity"] == pytest.approx(expected)
    assert record["mask_sparsity"] == pytest.approx(3 / 6)
    assert record["cumulative_mask_sparsity"] == pytest.approx(3 / 6)


# ---- what trains, and clear errors ---------------------------------------------------------------
def test_each_parameter_is_shared_or_belongs_to_exactly_one_task():
    backbone = tiny_resnet(num_tasks=3)
    shared = {id(p) for p in backbone.shared_parameters()}
    per_task = [{id(p) for p in backbone.task_parameters(t)} for t in range(3)]
    assert all(not (shared & own) for own in per_task)
    assert not (per_task[0] & per_task[1]) and not (per_task[1] & per_task[2])
    assert shared.union(*per_task) == {id(p) for p in backbone.parameters()}


def test_trainable_parameters_are_shared_plus_the_current_task_only():
    backbone = tiny_resnet(num_tasks=3)
    algorithm = make_hat(backbone)
    for t in range(3):
        algorithm.setup_task(t, 2)
    algorithm.setup_task(1, 2)
    trainable = {id(p) for p in algorithm.trainable_parameters()}
    expected = (
        backbone.shared_parameters()
        + backbone.task_parameters(1)
        + list(algorithm.heads.heads[1].parameters())
    )
    assert trainable == {id(p) for p in expected}
    assert not trainable & {id(p) for p in algorithm.heads.heads[0].parameters()}
    assert not trainable & {id(p) for p in backbone.task_parameters(0)}


def test_embeddings_are_clamped_after_each_step():
    torch.manual_seed(0)
    backbone = tiny_mlp()
    # a huge learning rate throws the embeddings far out; the clamp brings them back
    algorithm = make_hat(backbone, optimizer=functools.partial(torch.optim.SGD, lr=1e4), embedding_clamp=6.0)
    algorithm.setup_task(0, 2)
    batches = Batches([(torch.randn(8, 3), torch.randint(0, 2, (8,)), 0) for _ in range(2)])
    trainer().fit(algorithm, train_dataloaders=batches, val_dataloaders=Batches(batches.batches[:1]))
    values = torch.cat([e.detach() for e in backbone.embedding_parameters(0)])
    assert values.abs().max() == 6.0
    assert backbone.task_mask_stored[0]  # stored at the end of training


def test_hat_rejects_cil_and_plain_backbones():
    backbone = tiny_mlp()
    optimizer = functools.partial(torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="needs the task id"):
        HAT(backbone, HeadsCIL(backbone.output_dim), optimizer, num_tasks=2)
    with pytest.raises(ValueError, match="HATMaskBackbone"):
        HAT(MLP(3, (4,), 2), HeadsTIL(2), optimizer, num_tasks=2)
    with pytest.raises(
        ValueError, match="backbone.num_tasks=2 has room for fewer tasks than benchmark.num_tasks=5"
    ):
        HAT(backbone, HeadsTIL(2), optimizer, num_tasks=5)
    with pytest.raises(ValueError, match="adjustment_alpha"):
        HAT(backbone, HeadsTIL(2), optimizer, num_tasks=2, adjustment_mode="hat_const_alpha")


def test_weight_decay_is_refused_for_hat():
    algorithm = make_hat(
        tiny_mlp(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3)
    )  # AdamW decays by default
    algorithm.setup_task(0, 2)
    with pytest.raises(ValueError, match="weight_decay=0"):
        algorithm.configure_optimizers()


@pytest.mark.parametrize(
    "scheduler, expected_lr",
    [
        # threshold 10 (absolute): after the first epoch nothing counts as better -> one cut
        (
            functools.partial(
                torch.optim.lr_scheduler.ReduceLROnPlateau,
                factor=0.5,
                patience=0,
                threshold=10.0,
                threshold_mode="abs",
            ),
            0.05,
        ),
        (functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5), 0.025),
    ],
    ids=["plateau", "step"],
)
def test_lr_scheduler_is_stepped_once_per_epoch(scheduler, expected_lr):
    torch.manual_seed(0)
    algorithm = make_hat(tiny_mlp(), lr_scheduler=scheduler)
    algorithm.setup_task(0, 2)
    batches = Batches([(torch.randn(4, 3), torch.randint(0, 2, (4,)), 0) for _ in range(2)])
    fit_trainer = trainer(max_epochs=2)
    fit_trainer.fit(algorithm, train_dataloaders=batches, val_dataloaders=Batches(batches.batches[:1]))
    assert fit_trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(expected_lr)
