"""iCaRL (Rebuffi et al., CVPR 2017): herding, the loss, nearest-mean-of-exemplars, the exemplar
memory across tasks, the rules, exact resume, and an end-to-end run in CIL.

Herding, the loss and the NME scores are checked against values worked out by hand from the
paper's formulas, not recomputed by the code under test.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from clcore.algorithms.icarl import ICaRL, icarl_loss, nearest_mean_logits
from clcore.backbones.base import CLBackbone
from clcore.clrun.checks import preflight
from clcore.clrun.task_loop import run_sequence
from clcore.components.herding import herding_selection
from clcore.config_rules import ConfigError
from clcore.heads.cil import HeadsCIL
from tests.helpers import Batches, crash_and_resume, quiet_trainer

TINY = ("benchmark=split_digits", "paradigm=cil", "benchmark.num_tasks=3", "trainer.max_epochs=1")


# ---- herding (Algorithm 4) ---------------------------------------------------------------------
def test_herding_picks_the_exemplars_worked_out_by_hand():
    r"""Normalised features a=(1,0), b=(.6,.8), c=(.6,-.8), d=(.8,.6); mean mu=(.75,.15).

    Step 1, |mu - x|^2: a .0625+.0225=.085, b .445, c .925, d .205 -> a.
    Step 2, |mu - (a+x)/2|^2: b (.8,.4) .0025+.0625=.065, c (.8,-.4) .305, d (.9,.3) .045 -> d.
    Step 3, |mu - (a+d+x)/3|^2: b (.8,.4667) .0025+.1003=.1028, c (.8,-.0667) .0025+.0469=.0494 -> c,
    although b is the nearer to the mean on its own: herding balances what is already picked.
    Step 4: b. a and c are given unnormalised (x2, x5): herding works on normalised features.
    """
    features = torch.tensor([[2.0, 0.0], [0.6, 0.8], [3.0, -4.0], [0.8, 0.6]])
    assert herding_selection(features, 4).tolist() == [0, 3, 2, 1]
    assert herding_selection(features, 2).tolist() == [0, 3]
    assert herding_selection(features, 0).tolist() == []
    assert herding_selection(features, 10).tolist() == [0, 3, 2, 1]  # at most every sample


def test_herding_never_repeats_and_is_a_priority_order():
    torch.manual_seed(0)
    features = torch.randn(60, 8)
    everything = herding_selection(features, 60)
    assert sorted(everything.tolist()) == list(range(60))  # each sample once
    for k in (1, 5, 17, 40):
        assert torch.equal(herding_selection(features, k), everything[:k])
    # duplicated samples: a copy may be picked, the same index never twice
    doubled = torch.cat([features[:5], features[:5]])
    picks = herding_selection(doubled, 10).tolist()
    assert sorted(picks) == list(range(10))


# ---- the loss (Algorithm 3) and NME classification (Algorithm 1) ----------------------------------
def test_loss_is_bce_to_one_hot_new_classes_and_old_sigmoid_outputs():
    logits = torch.tensor([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]])
    targets = torch.tensor([2, 0])  # sample 2 is an exemplar of old class 0
    old = torch.tensor([[math.log(3.0)], [0.0]])  # sigmoid: 0.75, 0.5

    def bce(z, q):  # -(q log s(z) + (1 - q) log(1 - s(z)))
        s = 1 / (1 + math.exp(-z))
        return -(q * math.log(s) + (1 - q) * math.log(1 - s))

    # column 0 is old (distilled), columns 1-2 new (one-hot, 0 for the exemplar)
    expected = (bce(0, 0.75) + bce(1, 0) + bce(-1, 1) + bce(2, 0.5) + bce(0, 0) + bce(0.5, 0)) / 6
    assert icarl_loss(logits, targets, old).item() == pytest.approx(expected, rel=1e-6)
    # the first task: one-hot over every column
    first = (bce(0, 0) + bce(1, 0) + bce(-1, 1) + bce(2, 1) + bce(0, 0) + bce(0.5, 0)) / 6
    assert icarl_loss(logits, targets).item() == pytest.approx(first, rel=1e-6)


def test_nearest_mean_of_exemplars_worked_out_by_hand():
    """Means (1,0) and (0,1). (3,4) -> (.6,.8): squared distances .16+.64=.8 and .36+.04=.4, class 1;
    (4,-3) -> (.8,-.6): .04+.36=.4 and .64+2.56=3.2, class 0. Scores are minus the distances."""
    means = torch.eye(2)
    scores = nearest_mean_logits(torch.tensor([[3.0, 4.0], [4.0, -3.0]]), means)
    torch.testing.assert_close(scores, torch.tensor([[-0.8, -0.4], [-0.4, -3.2]]))
    assert scores.argmax(-1).tolist() == [1, 0]


# ---- the algorithm on plain batches: features = inputs ---------------------------------------------
class Identity(CLBackbone):
    """A linear layer that starts as the identity; with learning rate 0 the features are the inputs."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.linear = torch.nn.Linear(dim, dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(dim))
            self.linear.bias.zero_()

    def forward(self, x):
        return self.linear(x)


def make_icarl(memory_size: int, dim: int = 4, cls=ICaRL) -> ICaRL:
    optimizer = functools.partial(torch.optim.SGD, lr=0.0)
    return cls(Identity(dim), HeadsCIL(dim), optimizer, num_tasks=3, memory_size=memory_size, seed=0)


def task_batches(task_id: int, per_class: int = 10, dim: int = 4) -> Batches:
    generator = torch.Generator().manual_seed(task_id)
    x = torch.randn(2 * per_class, dim, generator=generator)
    labels = torch.arange(2).repeat(per_class)
    return Batches([(x[i : i + 6], labels[i : i + 6], task_id) for i in range(0, len(labels), 6)])


def test_memory_keeps_k_over_classes_per_class_and_cuts_old_sets_to_their_first():
    """K=12, 2 classes per task: m = 6, 3, 2. New classes herded on their inputs (the features),
    old sets cut to their first m; the class means are the re-normalised means of the exemplars."""
    algorithm = make_icarl(memory_size=12)
    sets: dict[int, torch.Tensor] = {}  # global class -> exemplar inputs after the previous task
    for task_id, m in enumerate((6, 3, 2)):
        algorithm.setup_task(task_id, 2)
        batches = task_batches(task_id)
        quiet_trainer().fit(algorithm, train_dataloaders=batches)
        held = algorithm.memory.contents()
        assert len(algorithm.memory) == 2 * (task_id + 1) * m
        for c in range(2 * (task_id + 1)):
            mine = held["inputs"][held["class_ids"] == c]
            assert len(mine) == m
            if c in sets:  # an old class: the first m of its set
                assert torch.equal(mine, sets[c][:m])
            else:  # a new class: herding on its samples
                x = torch.cat([b[0] for b in batches])
                labels = torch.cat([b[1] for b in batches])
                own = x[labels == c - 2 * task_id]
                assert torch.equal(mine, own[herding_selection(own, m)])
            sets[c] = mine
            mean = F.normalize(F.normalize(mine, dim=1).mean(0), dim=0)
            torch.testing.assert_close(algorithm.class_means[c], mean)
        assert algorithm.on_task_end(task_id)["exemplars_per_class"] == m
        assert held["task_ids"].tolist() == [c // 2 for c in held["class_ids"].tolist()]
    # every seen class has a mean: the test scores are NME's over all 6 classes (features = inputs)
    x = torch.randn(5, 4)
    torch.testing.assert_close(algorithm.eval_logits(x, 2), nearest_mean_logits(x, algorithm.class_means))
    assert algorithm.eval_logits(x, 2).shape == (5, 6)


def test_the_previous_network_is_frozen_unregistered_and_copied_once_per_task():
    algorithm = make_icarl(memory_size=12)
    algorithm.setup_task(0, 2)
    assert algorithm.previous_network is None
    algorithm.setup_task(1, 2)
    previous = algorithm.previous_network
    assert not previous.training and not any(p.requires_grad for p in previous.parameters())
    assert not any(name.startswith("previous") for name in algorithm.state_dict())  # rebuilt, not saved
    assert previous["heads"](torch.zeros(1, 4)).shape == (1, 2)  # the old classes only
    algorithm.setup_task(1, 2)
    assert algorithm.previous_network is previous


class RNGProbe(ICaRL):
    """Records whether choosing the exemplars and computing the class means drew from the global RNG."""

    def on_train_end(self) -> None:
        before = torch.get_rng_state()
        super().on_train_end()
        self.rng_untouched = torch.equal(before, torch.get_rng_state())


def test_exemplars_and_class_means_use_no_global_randomness():
    algorithm = make_icarl(memory_size=12, cls=RNGProbe)
    for task_id in range(2):
        algorithm.setup_task(task_id, 2)
        quiet_trainer().fit(algorithm, train_dataloaders=task_batches(task_id))
        assert algorithm.rng_untouched and len(algorithm.class_means) == 2 * (task_id + 1)


# ---- the rules -----------------------------------------------------------------------------------
def test_rules_refuse_til_dil_and_bad_memory_options():
    assert ICaRL.config_problems({}, paradigm="cil") == []
    for paradigm in ("til", "dil"):
        (problem,) = ICaRL.config_problems({}, paradigm=paradigm)
        assert f"does not support paradigm={paradigm}" in problem and "class-incremental" in problem
    problems = ICaRL.config_problems({"memory_size": 0, "memory_batch_size": -1}, paradigm="cil")
    assert len(problems) == 2


def test_preflight_refuses_a_memory_smaller_than_the_classes(make_config):
    cfg = make_config("algorithm=icarl", "benchmark=split_digits", "paradigm=cil", "algorithm.memory_size=8")
    with pytest.raises(ConfigError, match=r"memory_size=8 is less than the sequence's 10 classes"):
        preflight(cfg)
    cfg = make_config("algorithm=icarl", "benchmark=split_digits", "paradigm=til", subdir="til")
    with pytest.raises(ConfigError, match="does not support paradigm=til"):
        preflight(cfg)


# ---- end to end ----------------------------------------------------------------------------------
def test_icarl_resumes_exactly_after_a_crash(make_config):
    """Crash in task 3: the memory and class means come from task 2's checkpoint, the previous
    network is copied again from its weights."""
    overrides = (*TINY, "algorithm=icarl")
    reference, resumed = crash_and_resume(make_config, *overrides)
    assert resumed.extra["exemplars_per_class"] == reference.extra["exemplars_per_class"]


@pytest.mark.slow
def test_icarl_keeps_old_classes_where_finetuning_forgets_them(make_config):
    finetuning = run_sequence(make_config(*TINY, subdir="finetuning"))
    icarl = run_sequence(make_config(*TINY, "algorithm=icarl", subdir="icarl"))
    # K=200 over 2, 4, 6 classes: 100, 50, 33 per class (the digits have ~140 per class)
    assert icarl.extra["exemplars_per_class"] == [100.0, 50.0, 33.0]
    assert icarl.extra["memory_samples"] == [200.0, 200.0, 198.0]
    old_ft, old_icarl = finetuning.acc_matrix[-1, :-1], icarl.acc_matrix[-1, :-1]
    print({"finetuning": old_ft.tolist(), "icarl": old_icarl.tolist()})
    assert old_ft.max() < 0.1  # Finetuning forgets the old tasks in CIL
    assert old_icarl.mean() > 0.5
