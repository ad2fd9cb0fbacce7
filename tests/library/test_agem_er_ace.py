"""A-GEM and ER-ACE: A-GEM's projection (Eq. 11) and that the training step applies it, ER-ACE's
asymmetric cross-entropy on a hand example, the rules, and end-to-end runs.

The expected values are computed here on their own (autograd on copies of the model, the formulas
written out), not by calling the code under test.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F

from clcore.algorithms.agem import AGEM, project_gradient
from clcore.algorithms.er_ace import ERACE, present_classes_cross_entropy
from clcore.backbones.mlp import MLP
from clcore.clrun.task_loop import run_sequence
from clcore.heads.cil import HeadsCIL
from clcore.heads.dil import HeadDIL
from clcore.heads.til import HeadsTIL
from tests.helpers import Batches, crash_and_resume, quiet_trainer

TINY = ("benchmark=split_digits", "paradigm=cil", "benchmark.num_tasks=3", "trainer.max_epochs=1")
HEADS = {"til": HeadsTIL, "cil": HeadsCIL, "dil": HeadDIL}


# ---- A-GEM's projection (Eq. 11) ------------------------------------------------------------------
def test_projection_matches_the_formula_on_a_hand_example():
    # g . g_ref = -1, |g_ref|^2 = 2: g - (-1 / 2) g_ref = (1, 0) + 0.5 (-1, 1) = (0.5, 0.5)
    g, g_ref = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    projected = project_gradient(g, g_ref)
    torch.testing.assert_close(projected, torch.tensor([0.5, 0.5]), rtol=0, atol=0)
    assert torch.dot(projected, g_ref).item() == 0.0  # on the half-space's boundary
    # three dimensions: g . g_ref = 2 - 6 + 2 = -2, |g_ref|^2 = 1 + 4 + 4 = 9: g + (2 / 9) g_ref
    g, g_ref = torch.tensor([2.0, 3.0, 1.0]), torch.tensor([1.0, -2.0, 2.0])
    expected = torch.tensor([2.0 + 2 / 9, 3.0 - 4 / 9, 1.0 + 4 / 9])
    torch.testing.assert_close(project_gradient(g, g_ref), expected)


def test_projection_leaves_g_unchanged_bit_for_bit_when_it_does_not_conflict():
    g = torch.tensor([3.0, 4.0])
    assert torch.equal(project_gradient(g, torch.tensor([1.0, 0.0])), g)  # dot 3 > 0
    assert torch.equal(project_gradient(g, torch.tensor([-4.0, 3.0])), g)  # dot 0: orthogonal
    assert torch.equal(project_gradient(g, torch.zeros(2)), g)  # no reference: no NaN from 0 / 0


def test_projection_never_conflicts_with_the_reference_on_random_gradients():
    conflicting = 0
    for seed in range(200):
        generator = torch.Generator().manual_seed(seed)
        g, g_ref = torch.randn(2, 50, generator=generator, dtype=torch.float64)
        if seed % 2:  # make half of them conflict on purpose
            g_ref = g_ref - 2 * g
        dot = torch.dot(g, g_ref)
        projected = project_gradient(g, g_ref)
        if dot >= 0:
            assert torch.equal(projected, g)
            continue
        conflicting += 1
        # Eq. 11: the projection's dot product with g_ref is 0 (>= 0 up to rounding) ...
        assert torch.dot(projected, g_ref) >= -1e-12 * g.norm() * g_ref.norm()
        # ... and it removes exactly the component along g_ref
        torch.testing.assert_close(projected, g - dot / g_ref.dot(g_ref) * g_ref)
        torch.testing.assert_close(projected - g, (projected - g).dot(g_ref) / g_ref.dot(g_ref) * g_ref)
    assert conflicting >= 100


# ---- A-GEM's training step applies the projection ------------------------------------------------
def flat_gradient(loss: torch.Tensor, parameters: list[torch.nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    return torch.cat(
        [(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(parameters, grads)]
    )


@pytest.mark.parametrize("paradigm", ["til", "cil", "dil"])
@pytest.mark.parametrize("clip", [None, 0.01])
def test_agem_step_updates_the_parameters_by_the_projected_gradient(paradigm, clip):
    """One plain-SGD step of task 2: theta' = theta - lr * g~ (then clipped, where Lightning clips)."""
    torch.manual_seed(0)
    lr = 0.1
    algorithm = AGEM(
        MLP(3, (5,), 4),
        HEADS[paradigm](4),
        functools.partial(torch.optim.SGD, lr=lr),
        num_tasks=2,
        memory_size=8,
        memory_batch_size=8,
        seed=0,
    )
    algorithm.setup_task(0, 2)
    x_memory, y_memory = torch.randn(8, 3), torch.zeros(8, dtype=torch.int64)
    algorithm.remember(x_memory, y_memory, 0)  # no benchmark: the inputs are stored as they are
    algorithm.setup_task(1, 2)
    # the same inputs under the other label: their gradient conflicts with the memory's
    x, y = x_memory.clone(), torch.ones(8, dtype=torch.int64)
    if paradigm == "til":  # task 2's head starts as task 1's, so the shared backbone's gradients conflict
        algorithm.heads.heads[1].load_state_dict(algorithm.heads.heads[0].state_dict())
    before = copy.deepcopy(algorithm)
    parameters = list(before.parameters())
    # g: the current batch's CE; g_ref: the memory batch's (every stored sample, all of task 1)
    g = flat_gradient(F.cross_entropy(before(x, 1), before.heads.targets(y, 1)), parameters)
    g_ref = flat_gradient(F.cross_entropy(before(x_memory, 0), y_memory), parameters)
    dot = torch.dot(g, g_ref)
    assert dot < 0, "the example must be a conflicting one"
    expected = g - dot / torch.dot(g_ref, g_ref) * g_ref
    if clip is not None:  # Lightning clips the norm after the projection (torch's clip_grad_norm_)
        expected = expected * min(1.0, clip / (expected.norm().item() + 1e-6))

    quiet_trainer(max_steps=1, gradient_clip_val=clip).fit(algorithm, train_dataloaders=Batches([(x, y, 1)]))

    old = torch.cat([p.detach().reshape(-1) for p in parameters])
    new = torch.cat([p.detach().reshape(-1) for p in algorithm.parameters()])
    torch.testing.assert_close(new, old - lr * expected, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(new, old - lr * g, rtol=1e-4, atol=1e-6)  # plain SGD would differ
    assert len(algorithm.memory) == 8 and algorithm.memory.seen == 16  # the batch was offered


def test_agem_without_memory_is_plain_sgd():
    torch.manual_seed(0)
    algorithm = AGEM(
        MLP(3, (5,), 4), HeadsCIL(4), functools.partial(torch.optim.SGD, lr=0.1), num_tasks=1, memory_size=8
    )
    algorithm.setup_task(0, 2)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    before = copy.deepcopy(algorithm)
    g = flat_gradient(F.cross_entropy(before(x, 0), y), list(before.parameters()))
    quiet_trainer(max_steps=1).fit(algorithm, train_dataloaders=Batches([(x, y, 0)]))
    old = torch.cat([p.detach().reshape(-1) for p in before.parameters()])
    new = torch.cat([p.detach().reshape(-1) for p in algorithm.parameters()])
    torch.testing.assert_close(new, old - 0.1 * g)


# ---- ER-ACE's asymmetric cross-entropy -----------------------------------------------------------
def test_present_classes_cross_entropy_matches_a_hand_computation():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, 2.0]], requires_grad=True)
    targets = torch.tensor([2, 3])  # present: classes 2 and 3; classes 0 and 1 are absent
    # sample 1: columns 2, 3 hold (3, 4), target column 2: -log(e^3 / (e^3 + e^4)) = log(1 + e)
    # sample 2: columns 2, 3 hold (0, 2), target column 3: -log(e^2 / (e^0 + e^2)) = log(1 + e^-2)
    expected = (math.log(1 + math.e) + math.log(1 + math.exp(-2))) / 2
    loss = present_classes_cross_entropy(logits, targets)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # the absent classes get no gradient; the present ones (softmax over them - one-hot) / B
    p1, p2 = math.e / (1 + math.e), 1 / (1 + math.exp(2))  # probability of the other present class
    expected_grad = torch.tensor([[0.0, 0.0, -p1, p1], [0.0, 0.0, p2, -p2]]) / 2
    torch.testing.assert_close(logits.grad, expected_grad)
    assert torch.equal(logits.grad[:, :2], torch.zeros(2, 2))
    # every class present: the plain cross-entropy
    everything = torch.tensor([0, 1, 2, 3, 0])
    scores = torch.randn(5, 4)
    torch.testing.assert_close(
        present_classes_cross_entropy(scores, everything), F.cross_entropy(scores, everything)
    )


def make_er_ace(paradigm: str, **options) -> ERACE:
    return ERACE(
        MLP(3, (5,), 4),
        HEADS[paradigm](4),
        functools.partial(torch.optim.SGD, lr=0.1),
        num_tasks=2,
        **options,
    )


@pytest.mark.parametrize("paradigm", ["til", "cil", "dil"])
def test_er_ace_loss_is_the_masked_current_ce_plus_the_memory_ce(paradigm, monkeypatch):
    torch.manual_seed(0)
    algorithm = make_er_ace(paradigm, memory_size=8, memory_batch_size=8, seed=0)
    monkeypatch.setattr(algorithm, "is_logging_step", lambda batch_idx: False)  # no Trainer to log to
    algorithm.setup_task(0, 2)
    x_memory, y_memory = torch.randn(8, 3), torch.randint(0, 2, (8,))
    algorithm.remember(x_memory, y_memory, 0)
    algorithm.setup_task(1, 2)
    x, y = torch.randn(6, 3), torch.tensor([0, 0, 0, 0, 0, 0])  # only the new task's first class
    with torch.no_grad():
        current = algorithm(x, 1)
        targets = algorithm.heads.targets(y, 1)
        if paradigm == "cil":  # only the present class's column: -log(1) = 0
            current_ce = torch.tensor(0.0)
        else:  # TIL: task 2's own head; DIL: the shared head (no old classes)
            current_ce = F.cross_entropy(current, targets)
        memory_ce = F.cross_entropy(algorithm(x_memory, 0), y_memory)  # task 1's classes: labels as they are
        loss = algorithm.training_step((x, y, 1), 0)
    torch.testing.assert_close(loss, current_ce + memory_ce)
    assert algorithm.memory.seen == 14


def test_er_ace_current_batch_gives_old_classes_no_gradient_in_cil():
    """With nothing to replay, one step of task 2 leaves task 1's head block untouched."""
    torch.manual_seed(0)
    algorithm = make_er_ace("cil", memory_size=8)
    algorithm.setup_task(0, 2)
    algorithm.setup_task(1, 2)
    old_block = copy.deepcopy(algorithm.heads.blocks[0])
    new_block = copy.deepcopy(algorithm.heads.blocks[1])
    batch = (torch.randn(6, 3), torch.randint(0, 2, (6,)), 1)
    quiet_trainer(max_steps=1).fit(algorithm, train_dataloaders=Batches([batch]))
    assert torch.equal(algorithm.heads.blocks[0].weight, old_block.weight)
    assert torch.equal(algorithm.heads.blocks[0].bias, old_block.bias)
    assert not torch.equal(algorithm.heads.blocks[1].weight, new_block.weight)


# ---- rules ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [AGEM, ERACE])
def test_rules_are_checked_before_training(cls):
    assert cls.config_problems({"memory_size": 0})[0].startswith("algorithm.memory_size=0")
    problems = cls.config_problems({"memory_size": 1.5, "memory_batch_size": 0, "seed": "x"})
    assert [p.split("=")[0] for p in problems] == [
        "algorithm.memory_size",
        "algorithm.memory_batch_size",
        "algorithm.seed",
    ]
    for paradigm in ("til", "cil", "dil"):
        assert cls.config_problems({}, paradigm=paradigm) == []


# ---- end to end ----------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["agem", "er_ace"])
@pytest.mark.parametrize("paradigm", ["til", "dil"])
def test_runs_in_til_and_dil(make_config, algorithm, paradigm):
    results = run_sequence(
        make_config(
            "benchmark=split_digits" if paradigm == "til" else "benchmark=permuted_digits",
            f"paradigm={paradigm}",
            "benchmark.num_tasks=2",
            f"algorithm={algorithm}",
            "save_checkpoints=false",
        )
    )
    assert results.extra["memory_samples"][-1] == 200
    assert results.acc_matrix[-1].nanmean() > 0.5


@pytest.mark.parametrize("algorithm", ["agem", "er_ace"])
def test_crash_mid_sequence_resumes_exactly(make_config, algorithm):
    crash_and_resume(make_config, *TINY, f"algorithm={algorithm}", "algorithm.memory_size=50")


def test_agem_and_er_ace_end_to_end_in_cil(make_config):
    finetuning = run_sequence(make_config(*TINY, subdir="finetuning"))
    agem = run_sequence(make_config(*TINY, "algorithm=agem", subdir="agem"))
    er_ace = run_sequence(make_config(*TINY, "algorithm=er_ace", subdir="er_ace"))
    for results in (agem, er_ace):
        assert results.extra["memory_samples"][-1] == 200
        assert results.extra["memory_bytes"][-1] > 0
        assert results.acc_matrix[-1, -1] >= 0  # the sequence completed and was tested
    old = {name: r.acc_matrix[-1, :-1].mean().item() for name, r in (("ft", finetuning), ("er_ace", er_ace))}
    print(old, {"agem": agem.acc_matrix[-1].nanmean().item()})
    # Finetuning forgets the old tasks in CIL (~0 on them); ER-ACE keeps much of them
    assert finetuning.acc_matrix[-1, :-1].max() < 0.1
    assert old["er_ace"] > old["ft"] + 0.3, old
