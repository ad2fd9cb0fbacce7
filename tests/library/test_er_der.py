"""ER, DER and DER++: the logit loss, the rules, exact resume, and end-to-end runs in CIL."""

from __future__ import annotations

import pytest
import torch

from clcore.algorithms.der import DER, DERpp, logit_matching_loss
from clcore.algorithms.er import ER
from clcore.clrun.task_loop import run_sequence
from tests.helpers import crash_and_resume

TINY = ("benchmark=split_digits", "paradigm=cil", "benchmark.num_tasks=3", "trainer.max_epochs=1")


def test_logit_matching_loss_equals_a_hand_computation():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 5.0, 2.0]])
    stored = torch.tensor([[0.5, 2.5, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    widths = torch.tensor([2, 4])  # sample 1 was stored with 2 classes seen, sample 2 with 4
    # compared entries: (1-0.5)^2, (2-2.5)^2 | (0-1)^2, (-1-1)^2, (5-1)^2, (2-1)^2
    expected = (0.25 + 0.25 + 1 + 4 + 16 + 1) / 6
    assert logit_matching_loss(logits, stored, widths).item() == pytest.approx(expected)
    # every column recorded: the plain mean squared error (Mammoth's F.mse_loss)
    full = torch.tensor([4, 4])
    torch.testing.assert_close(logit_matching_loss(logits, stored, full), ((logits - stored) ** 2).mean())


def test_rules_are_checked_before_training():
    assert ER.config_problems({"memory_size": 0})[0].startswith("algorithm.memory_size=0")
    problems = DERpp.config_problems({"alpha": -1, "beta": "x", "memory_batch_size": 0})
    assert len(problems) == 3
    assert DER.config_problems({}) == [] and DERpp.config_problems({}) == []


@pytest.mark.parametrize("algorithm", ["er", "derpp"])
def test_crash_mid_sequence_resumes_exactly(make_config, algorithm):
    overrides = (*TINY, f"algorithm={algorithm}", "algorithm.memory_size=50")
    reference, resumed = crash_and_resume(make_config, *overrides)
    assert resumed.extra["memory_bytes"] == reference.extra["memory_bytes"]


@pytest.mark.slow
def test_er_and_derpp_end_to_end_in_cil(make_config):
    finetuning = run_sequence(make_config(*TINY, subdir="finetuning"))
    er = run_sequence(make_config(*TINY, "algorithm=er", subdir="er"))
    derpp = run_sequence(make_config(*TINY, "algorithm=derpp", subdir="derpp"))
    for results in (er, derpp):
        assert results.extra["memory_samples"][-1] == 200
        assert results.extra["memory_bytes"][-1] > 0
    aa = {
        name: r.acc_matrix[-1].nanmean().item()
        for name, r in (("ft", finetuning), ("er", er), ("derpp", derpp))
    }
    print(aa)
    # Finetuning forgets the old tasks in CIL (~0 on them); ER keeps part of them
    assert finetuning.acc_matrix[-1, :-1].max() < 0.1
    assert er.acc_matrix[-1, :-1].mean() > 0.2
    assert aa["er"] > aa["ft"] + 0.15, aa


def test_der_in_cil_has_every_class_from_task_1_and_predicts_among_the_seen(make_config):
    """DER's CIL head (Mammoth's convention): every class of the sequence from task 1, so the
    memory records logits for later classes too; validation and test use the classes seen."""
    from clcore.callbacks import CLCallback

    seen = []

    class Widths(CLCallback):
        def on_task_end(self, trainer, algorithm, task_id, results):
            x = trainer.datamodule.prepare_batch(trainer.datamodule.task_split("test", 0).images[:4], 0)
            seen.append((algorithm(x, task_id).shape[1], algorithm.eval_logits(x, task_id).shape[1]))
            assert algorithm.memory.logits.shape[1] == 6  # recorded over all 6 classes

    run_sequence(make_config(*TINY, "algorithm=der", subdir="der"), [Widths()])
    assert seen == [(6, 2), (6, 4), (6, 6)]

    grown = []

    class GrownWidths(CLCallback):
        def on_task_end(self, trainer, algorithm, task_id, results):
            x = trainer.datamodule.prepare_batch(trainer.datamodule.task_split("test", 0).images[:4], 0)
            grown.append((algorithm(x, task_id).shape[1], algorithm.memory.logits.shape[1]))

    cfg = make_config(*TINY, "algorithm=der", "algorithm.full_cil_head=false", subdir="grown")
    run_sequence(cfg, [GrownWidths()])
    assert grown == [(2, 2), (4, 4), (6, 6)]  # the head and the records grow with the tasks
