"""LwF (Li & Hoiem, TPAMI 2017) and its distillation loss (Eq. 2) on tiny tensors and short runs.

The distillation values are written out from the formula by hand, not recomputed by the code under
test; LwF's targets are checked bit for bit against a copy of the model taken at the end of task 1.
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import pytest
import torch

import clcore.algorithms.lwf as lwf_module
from clcore.algorithms.lwf import LwF
from clcore.backbones.mlp import MLP
from clcore.clrun import run_sequence
from clcore.components.distillation import distillation_loss
from clcore.config_rules import ConfigError
from clcore.heads.cil import HeadsCIL
from clcore.heads.dil import HeadDIL
from clcore.heads.til import HeadsTIL
from tests.helpers import Batches, FailInTask, quiet_trainer


# ---- the distillation loss (Eq. 2) ----------------------------------------------------------------
def test_distillation_at_temperature_two_matches_the_hand_computation():
    # sample 1: teacher logits (0, ln 3) at T = 2 give probabilities (1, sqrt 3) / (1 + sqrt 3);
    #           student logits (1, 0) at T = 2 give log-probabilities (0.5 - L, -L), L = ln(1 + e^0.5)
    # sample 2: both uniform over two outputs: cross-entropy ln 2
    student = torch.tensor([[1.0, 0.0], [0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    root3, big_l = math.sqrt(3.0), math.log(1.0 + math.exp(0.5))
    p0 = 1.0 / (1.0 + root3)
    sample_1 = -(p0 * (0.5 - big_l) + (1.0 - p0) * (-big_l))
    expected = (sample_1 + math.log(2.0)) / 2  # mean over the batch
    loss = distillation_loss(student, teacher, temperature=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)

    # d loss / d student = (softmax(student / T) - softmax(teacher / T)) / (T * B)
    loss.backward()
    q0 = math.exp(0.5) / (math.exp(0.5) + 1.0)
    expected_grad = torch.tensor([[q0 - p0, (1 - q0) - (1 - p0)], [0.0, 0.0]]) / (2.0 * 2)
    torch.testing.assert_close(student.grad, expected_grad, rtol=1e-6, atol=1e-7)


def test_t_squared_scales_loss_and_gradient_by_t_squared():
    torch.manual_seed(0)
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3)
    plain = distillation_loss(student, teacher, temperature=3.0)
    (plain_grad,) = torch.autograd.grad(plain, student)
    scaled = distillation_loss(student, teacher, temperature=3.0, t_squared=True)
    (scaled_grad,) = torch.autograd.grad(scaled, student)
    torch.testing.assert_close(scaled, 9.0 * plain)
    torch.testing.assert_close(scaled_grad, 9.0 * plain_grad)


def test_distillation_at_temperature_one_is_cross_entropy_to_the_teacher_softmax_and_minimal_at_it():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    soft = torch.softmax(teacher, dim=-1)
    torch.testing.assert_close(
        distillation_loss(student, teacher, 1.0), torch.nn.functional.cross_entropy(student, soft)
    )
    # the cross-entropy to a distribution is smallest at that distribution (its entropy)
    assert distillation_loss(teacher, teacher, 2.0) < distillation_loss(student, teacher, 2.0)
    # the teacher is a target: no gradient reaches it
    teacher_leaf, student_leaf = teacher.clone().requires_grad_(), student.clone().requires_grad_()
    assert torch.autograd.grad(
        distillation_loss(student_leaf, teacher_leaf), teacher_leaf, allow_unused=True
    ) == (None,)
    with pytest.raises(ValueError, match="differ"):
        distillation_loss(student, teacher[:, :3])


# ---- LwF's targets: the model at the end of the previous task, bit for bit --------------------------
HEADS = {"til": HeadsTIL, "cil": HeadsCIL, "dil": HeadDIL}


def make_lwf(paradigm: str, **options) -> LwF:
    backbone = MLP(3, (5,), 4)
    optimizer = functools.partial(torch.optim.SGD, lr=0.5)
    return LwF(backbone, HEADS[paradigm](4), optimizer, num_tasks=3, **options)


@pytest.mark.parametrize("paradigm", ["til", "cil", "dil"])
def test_old_task_targets_are_the_outputs_of_the_model_at_the_end_of_the_previous_task(paradigm, monkeypatch):
    torch.manual_seed(0)
    algorithm = make_lwf(paradigm)
    batches = [
        Batches([(torch.randn(6, 3), torch.randint(0, 2, (6,)), t) for _ in range(3)]) for t in range(3)
    ]
    ends: list[torch.nn.ModuleDict] = []
    used: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recording(student, teacher, temperature, t_squared):
        used.append((student.detach().clone(), teacher.clone()))
        return distillation_loss(student, teacher, temperature, t_squared)

    monkeypatch.setattr(lwf_module, "distillation_loss", recording)
    for task_id in range(3):
        algorithm.setup_task(task_id, 2)
        used.clear()
        quiet_trainer().fit(algorithm, train_dataloaders=batches[task_id])
        if task_id > 0:
            # What the model at the end of the previous task outputs on each batch of this one
            previous = ends[-1].eval()
            with torch.no_grad():
                expected = []
                for x, _, _ in batches[task_id]:
                    features = previous["backbone"](x)
                    if paradigm == "til":
                        expected += [previous["heads"](features, j) for j in range(task_id)]
                    else:  # CIL: the previous model's whole head = the old classes; DIL: the shared head
                        expected.append(previous["heads"](features, task_id - 1))
            assert len(used) == len(expected)
            for (student, teacher), want in zip(used, expected, strict=True):
                assert torch.equal(teacher, want)
                assert student.shape == want.shape
            # the student moved away from it; the teacher (a frozen copy) did not
            assert not torch.equal(used[-1][0], used[-1][1])
        ends.append(
            copy.deepcopy(torch.nn.ModuleDict({"backbone": algorithm.backbone, "heads": algorithm.heads}))
        )


def test_the_teacher_is_frozen_unregistered_and_copied_once_per_task():
    algorithm = make_lwf("til")
    algorithm.setup_task(0, 2)
    assert algorithm.teacher is None
    algorithm.setup_task(1, 2)
    teacher = algorithm.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not any(name.startswith("_teacher") for name in algorithm.state_dict())  # rebuilt, not saved
    assert len(teacher["heads"].heads) == 1  # the old task's head only
    algorithm.setup_task(1, 2)  # again for the same task: the same teacher, not a new copy
    assert algorithm.teacher is teacher


def test_options_are_checked_with_every_problem_at_once():
    with pytest.raises(ConfigError) as refused:
        make_lwf("til", distillation_lambda=-1.0, temperature=0.0, t_squared="yes")
    message = str(refused.value)
    assert "distillation_lambda" in message and "temperature" in message and "t_squared" in message
    assert LwF.config_problems({"temperature": 2.0, "distillation_lambda": 0.5}, paradigm="cil") == []


# ---- end to end ---------------------------------------------------------------------------------
def test_lwf_forgets_less_than_finetuning_in_til(make_config):
    # Split Digits TIL, 5 epochs per task: Finetuning loses ~4 points of BWT, LwF (lambda 10) ~none.
    common = ("benchmark=split_digits", "paradigm=til", "trainer.max_epochs=5", "save_checkpoints=false")
    finetuning = run_sequence(make_config("algorithm=finetuning", *common, subdir="finetuning")).summary()
    lwf = run_sequence(
        make_config("algorithm=lwf", "algorithm.distillation_lambda=10", *common, subdir="lwf")
    ).summary()
    assert lwf["bwt"] > finetuning["bwt"] + 0.01
    assert lwf["bwt"] > -0.02
    assert lwf["average_accuracy"] > 0.9


@pytest.mark.parametrize("paradigm", ["cil", "dil"])
def test_lwf_runs_in_cil_and_dil_with_no_other_override(make_config, paradigm):
    results = run_sequence(make_config("algorithm=lwf", "benchmark=split_digits", f"paradigm={paradigm}"))
    matrix = results.acc_matrix
    assert results.tasks_done == 5 and torch.isfinite(matrix.tril()).all()
    assert (
        matrix[-1, -1] > 0.6
    )  # the last task is learned (1 epoch: some middle tasks are not, also for Finetuning)
    if paradigm == "dil":  # the shared head: distillation keeps more than Finetuning does
        finetuning = run_sequence(
            make_config("algorithm=finetuning", "benchmark=split_digits", "paradigm=dil", subdir="ft")
        )
        assert results.summary()["average_accuracy"] > finetuning.summary()["average_accuracy"] + 0.02


def test_lwf_resumes_exactly_after_a_crash(make_config):
    """Crash in task 3: the resumed run rebuilds the teacher from task 2's checkpointed weights."""
    overrides = ("algorithm=lwf", "benchmark=split_digits", "benchmark.num_tasks=3", "backbone.dropout=0.2")
    reference = run_sequence(make_config(*overrides, subdir="reference"))
    cfg = make_config(*overrides, subdir="crashed")
    with pytest.raises(RuntimeError, match="simulated crash in task 3"):
        run_sequence(cfg, extra_callbacks=[FailInTask(task=3)])
    checkpoints = sorted(p.name for p in (Path(cfg.paths.output_dir) / "checkpoints").glob("task_*.ckpt"))
    assert checkpoints == ["task_1.ckpt", "task_2.ckpt"]
    resumed = run_sequence(cfg)
    torch.testing.assert_close(resumed.acc_matrix, reference.acc_matrix, rtol=0, atol=0, equal_nan=True)
