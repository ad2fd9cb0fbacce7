"""GDumb: its greedy class-balanced memory (``ReplayMemory(policy="balanced")``), its rules, a learner
that depends on the memory alone, exact resume, and end-to-end runs in CIL, TIL and DIL."""

from __future__ import annotations

import functools
import math
from collections import Counter

import pytest
import torch

from clcore.algorithms.gdumb import GDumb
from clcore.callbacks import CLCallback
from clcore.clrun.task_loop import run_sequence
from clcore.components.replay_memory import ReplayMemory
from clcore.config_rules import ConfigError
from tests.helpers import crash_and_resume

TINY = ("benchmark=split_digits", "paradigm=cil", "benchmark.num_tasks=3", "trainer.max_epochs=1")


# ---- the sampler: GDumb's greedy class-balanced memory -----------------------------------------------
def _task_stream(classes: list[int], per_class: int, generator: torch.Generator) -> torch.Tensor:
    """Class ids of one task's stream: ``per_class`` samples of each class, in a random order."""
    ids = torch.tensor(classes).repeat_interleave(per_class)
    return ids[torch.randperm(len(ids), generator=generator)]


def _offer(memory: ReplayMemory, class_ids: torch.Tensor, batch: int, first: int = 0) -> None:
    """Offer a stream in batches; a sample's input is its position in the stream (``first`` + i),
    so the memory's contents name the samples it kept."""
    for start in range(0, len(class_ids), batch):
        c = class_ids[start : start + batch]
        position = torch.arange(first + start, first + start + len(c))
        memory.add(position.float().unsqueeze(1), c, 0, class_ids=c)


def _counts(memory: ReplayMemory) -> Counter:
    return Counter(memory.class_ids[: len(memory)].tolist())


def _is_balanced(counts: Counter, memory_size: int, classes: set[int]) -> bool:
    """Every seen class held, each ``floor`` or ``ceil`` of $m / |Y|$ times, the memory full."""
    low, high = memory_size // len(classes), math.ceil(memory_size / len(classes))
    return (
        set(counts) == classes
        and all(low <= n <= high for n in counts.values())
        and sum(counts.values()) == memory_size
    )


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_memory_is_class_balanced_after_every_task(batch):
    """m=20; tasks of classes {0,1}, {2,3,4}, {5}, 15 samples a class: 10 each, then 4 each, then
    3 or 4 (20/6), whatever the batch size the stream arrives in."""
    generator = torch.Generator().manual_seed(0)
    memory = ReplayMemory(20, seed=0, policy="balanced")
    seen: set[int] = set()
    offered = 0
    for classes in ([0, 1], [2, 3, 4], [5]):
        stream = _task_stream(classes, 15, generator)
        _offer(memory, stream, batch, first=offered)
        offered += len(stream)
        seen |= set(classes)
        assert _is_balanced(_counts(memory), 20, seen), (classes, _counts(memory))
    assert memory.seen == offered
    # the contents are the samples of their class ids (inputs name the stream positions)
    kept = memory.inputs[: len(memory)].squeeze(1).long()
    assert kept.unique().numel() == 20  # no sample twice


def test_a_sample_is_never_evicted_for_a_class_with_as_many():
    """One sample at a time through a stream of 12 classes in uneven tasks: whenever a stored sample
    of class v makes room for class c, v held more samples than c; a sample is stored only while
    its class holds fewer than m / |Y|; nothing is evicted while the memory has room."""
    generator = torch.Generator().manual_seed(1)
    m = 17
    memory = ReplayMemory(m, seed=1, policy="balanced")
    stream = torch.cat(
        [_task_stream(classes, 9, generator) for classes in ([0, 1, 2], [3], [4, 5, 6, 7], [8, 9, 10, 11])]
    )
    seen: set[int] = set()
    evictions = 0
    for position, c in enumerate(stream.tolist()):
        before = _counts(memory)
        seen.add(c)
        _offer(memory, torch.tensor([c]), 1, first=position)
        after = _counts(memory)
        lost = [k for k in before if after[k] < before[k]]
        if after[c] > before[c]:  # stored
            assert before[c] < m / len(seen)
            if sum(before.values()) < m:
                assert lost == []
            else:
                (victim,) = lost
                assert before[victim] > before[c], (before, c)
                evictions += 1
        else:  # refused: its class had its share already, and nothing else moved
            assert before[c] >= m / len(seen) and after == before
    assert evictions > 20  # the rule was exercised


def _algorithm_1(class_ids: list[int], m: int, seed: int) -> list[int]:
    """GDumb's Algorithm 1 written from its definition, one sample at a time: the class of each
    slot. $|\\mathcal{Y}|$ counts every class seen so far (the arriving one included); the victim is
    a uniformly drawn sample (by slot order) of the largest class, ties to the lowest class id."""
    generator = torch.Generator().manual_seed(seed)
    slots: list[int] = []
    seen: set[int] = set()
    for c in class_ids:
        seen.add(c)
        count = Counter(slots)
        if count[c] >= m / len(seen):
            continue
        if len(slots) < m:
            slots.append(c)
            continue
        largest = max(count, key=lambda k: (count[k], -k))
        victims = [slot for slot, k in enumerate(slots) if k == largest]
        slots[victims[int(torch.randint(len(victims), (1,), generator=generator))]] = c
    return slots


def test_the_memory_follows_algorithm_1_in_batches():
    """Random streams, memories smaller and larger than the number of classes, batches of 5."""
    generator = torch.Generator().manual_seed(2)
    for trial in range(100):
        m = int(torch.randint(1, 12, (1,), generator=generator))
        classes = int(torch.randint(1, 16, (1,), generator=generator))
        stream = torch.randint(
            0, classes, (int(torch.randint(1, 100, (1,), generator=generator)),), generator=generator
        )
        memory = ReplayMemory(m, seed=trial, policy="balanced")
        _offer(memory, stream, 5)
        assert memory.class_ids[: len(memory)].tolist() == _algorithm_1(stream.tolist(), m, trial), trial


def test_a_batch_at_once_equals_one_sample_at_a_time():
    """Same seed, same stream (many evictions, some of slots written earlier in the same batch):
    the same samples in the same slots, the generator at the same state."""
    generator = torch.Generator().manual_seed(3)
    stream = torch.cat([_task_stream([0, 1, 2], 40, generator), _task_stream([3, 4, 5, 6, 7], 40, generator)])
    together, alone = ReplayMemory(10, seed=3, policy="balanced"), ReplayMemory(10, seed=3, policy="balanced")
    _offer(together, stream, 64)
    _offer(alone, stream, 1)
    assert torch.equal(together.inputs, alone.inputs) and torch.equal(together.class_ids, alone.class_ids)
    assert together.seen == alone.seen == len(stream)
    assert torch.equal(together.generator.get_state(), alone.generator.get_state())


def test_state_dict_restores_contents_and_generator():
    generator = torch.Generator().manual_seed(4)
    first, second = _task_stream([0, 1], 20, generator), _task_stream([2, 3, 4], 20, generator)
    memory = ReplayMemory(12, seed=5, policy="balanced")
    _offer(memory, first, 8)
    fresh = ReplayMemory(12, seed=99, policy="balanced")
    fresh.load_state_dict(memory.state_dict())
    assert len(fresh) == len(memory) == 12 and fresh.seen == memory.seen == len(first)
    assert torch.equal(fresh.inputs, memory.inputs) and torch.equal(fresh.class_ids, memory.class_ids)
    assert torch.equal(fresh.generator.get_state(), memory.generator.get_state())
    for m in (memory, fresh):  # the same evictions from here on
        _offer(m, second, 8, first=len(first))
    assert torch.equal(fresh.inputs, memory.inputs)
    assert torch.equal(fresh.sample(5)["inputs"], memory.sample(5)["inputs"])
    with pytest.raises(ValueError, match="policy"):  # a reservoir memory does not load a balanced one
        ReplayMemory(12, seed=5).load_state_dict(memory.state_dict())


def test_the_memory_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    memory = ReplayMemory(6, seed=1, policy="balanced")
    _offer(memory, torch.arange(40) % 5, 7)  # evictions draw from the memory's generator
    memory.sample(3)
    assert torch.equal(torch.rand(3), expected)


# ---- the rules -------------------------------------------------------------------------------------
@pytest.mark.parametrize("epochs", [0, -3, 2.5, True, "10"])
def test_memory_epochs_must_be_a_positive_integer(epochs):
    (problem,) = GDumb.config_problems({"memory_epochs": epochs})
    assert problem.startswith(f"algorithm.memory_epochs={epochs!r}")


def test_rules_are_checked_before_training():
    assert GDumb.config_problems({}) == []
    for paradigm in ("til", "cil", "dil"):
        assert GDumb.config_problems({}, paradigm=paradigm) == []
    problems = GDumb.config_problems({"memory_size": 0, "memory_batch_size": -1, "memory_epochs": 0})
    assert [p.split("=")[0] for p in problems] == [
        "algorithm.memory_size",
        "algorithm.memory_batch_size",
        "algorithm.memory_epochs",
    ]
    # a plateau scheduler: as the config gives it to the pre-flight check and as the factory
    plateau = {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "_partial_": True}
    (problem,) = GDumb.config_problems({"lr_scheduler": plateau})
    assert problem.startswith("lr_scheduler=ReduceLROnPlateau cannot drive GDumb")
    factory = functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, mode="min")
    assert len(GDumb.config_problems({"lr_scheduler": factory})) == 1
    cosine = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=10)
    assert GDumb.config_problems({"lr_scheduler": cosine}) == []


def test_the_constructor_refuses_a_plateau_scheduler():
    from clcore.backbones.mlp import MLP
    from clcore.heads.cil import HeadsCIL

    backbone = MLP(input_dim=4, hidden_dims=[8], output_dim=8)
    with pytest.raises(ConfigError, match="ReduceLROnPlateau"):
        GDumb(
            backbone,
            HeadsCIL(8),
            functools.partial(torch.optim.SGD, lr=0.1),
            num_tasks=2,
            lr_scheduler=functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau),
        )


# ---- the learner, outside a Trainer (plain float inputs pass ``prepare_inputs`` unchanged) -------------
def _learner_state(algorithm) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in algorithm._learner_tensors().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _tiny_gdumb(**options) -> GDumb:
    from clcore.backbones.mlp import MLP
    from clcore.heads.cil import HeadsCIL

    torch.manual_seed(0)
    settings = dict(memory_size=12, memory_epochs=5, memory_batch_size=4, seed=0) | options
    return GDumb(
        MLP(input_dim=4, hidden_dims=[8], output_dim=8, batch_norm=True),
        HeadsCIL(8),
        functools.partial(torch.optim.SGD, lr=0.1),
        num_tasks=2,
        **settings,
    )


def _offer_task(algorithm: GDumb, task_id: int, n: int = 20) -> None:
    generator = torch.Generator().manual_seed(task_id)
    labels = torch.arange(n) % 2
    inputs = torch.randn(n, 4, generator=generator) + 2 * labels.unsqueeze(1) + 4 * task_id
    algorithm.remember(inputs, labels, task_id)


def test_the_learner_is_a_function_of_the_memory_alone():
    """Trained twice on the same memory, from any weights: the same weights, bit for bit; its
    shuffling draws nothing from the global RNG; a new task's head block is reset to its own
    initial weights, the old blocks and batch norm to theirs."""
    algorithm = _tiny_gdumb()
    algorithm.setup_task(0, 2)
    initial = _learner_state(algorithm)
    _offer_task(algorithm, 0)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    loss = algorithm.train_on_memory()
    assert torch.equal(torch.rand(3), expected)  # no dropout here: the learner drew nothing globally
    assert loss is not None and torch.isfinite(loss)
    trained = _learner_state(algorithm)
    assert not _same(trained, initial)
    with torch.no_grad():
        for tensor in algorithm._learner_tensors().values():
            if tensor.is_floating_point():
                tensor.mul_(-3.0).add_(1.0)
    algorithm.train_on_memory()
    assert _same(_learner_state(algorithm), trained)
    # task 2: its block is recorded as grown; a reset sets every tensor back to where it started
    algorithm.setup_task(1, 2)
    block = {k: v for k, v in _learner_state(algorithm).items() if k.startswith("heads.blocks.1.")}
    _offer_task(algorithm, 1)
    algorithm.train_on_memory()
    algorithm.reset_learner()
    assert _same(_learner_state(algorithm), initial | block)


def test_the_initial_weights_travel_with_the_checkpoint_state():
    algorithm = _tiny_gdumb()
    algorithm.setup_task(0, 2)
    state = algorithm.cl_state_dict()
    other = _tiny_gdumb()
    with torch.no_grad():
        for tensor in other._initial_state.values():
            tensor.zero_()
    other.load_cl_state_dict(state)
    assert _same(other._initial_state, algorithm._initial_state)


def test_a_nonfinite_learner_loss_stops_the_task():
    from clcore.algorithms.base import NonFiniteLossError

    algorithm = _tiny_gdumb()
    algorithm.setup_task(0, 2)
    algorithm.remember(torch.full((6, 4), float("nan")), torch.arange(6) % 2, 0)
    with pytest.raises(NonFiniteLossError, match="memory epoch 1 of 5"):
        algorithm.train_on_memory()


def test_a_last_batch_of_one_joins_the_one_before():
    """9 samples in batches of 4: 4 + 5, not 4 + 4 + 1 (batch norm cannot train on one sample)."""
    algorithm = _tiny_gdumb(memory_size=9)
    algorithm.setup_task(0, 2)
    _offer_task(algorithm, 0, n=9)
    assert len(algorithm.memory) == 9
    algorithm.train_on_memory()  # would raise in BatchNorm1d on a batch of one


# ---- the learner, end to end -------------------------------------------------------------------------


class Inspect(CLCallback):
    """After each task: the memory's class counts and stream count, the validation accuracy the
    epoch logged; and, with ``retrain``, whether training the learner again from the same memory,
    after scrambling its weights, gives back the same weights bit for bit."""

    def __init__(self, retrain: bool = False) -> None:
        self.retrain = retrain
        self.counts: list[Counter] = []
        self.seen: list[int] = []  # samples the memory was offered, by the end of each task
        self.offered = 0  # training samples of the tasks so far
        self.stream: list[int] = []
        self.val_acc: list[float] = []
        self.same_after_retraining: list[bool] = []

    def on_train_end(self, trainer, algorithm) -> None:
        self.val_acc.append(float(trainer.callback_metrics["val/acc"]))

    def on_task_end(self, trainer, algorithm, task_id, results) -> None:
        self.counts.append(_counts(algorithm.memory))
        self.seen.append(algorithm.memory.seen)
        self.offered += len(trainer.datamodule.task_split("train", task_id).labels)
        self.stream.append(self.offered)
        if not self.retrain:
            return
        trained = _learner_state(algorithm)
        with torch.no_grad():
            for tensor in algorithm._learner_tensors().values():
                if tensor.is_floating_point():
                    tensor.add_(
                        torch.randn_like(tensor)
                    )  # the run keeps the RNG (preserved around callbacks)
        algorithm.train()
        algorithm.train_on_memory()
        again = _learner_state(algorithm)
        self.same_after_retraining.append(all(torch.equal(trained[k], again[k]) for k in trained))


@pytest.mark.slow
def test_gdumb_end_to_end_in_cil(make_config):
    finetuning = run_sequence(make_config(*TINY, subdir="finetuning"))
    inspect = Inspect(retrain=True)
    gdumb = run_sequence(make_config(*TINY, "algorithm=gdumb", subdir="gdumb"), extra_callbacks=[inspect])
    # the memory: full and class-balanced after every task (2, 4, 6 classes of 200 slots)
    for task, counts in enumerate(inspect.counts):
        assert _is_balanced(counts, 200, set(range(2 * (task + 1)))), counts
    assert gdumb.extra["memory_classes"] == [2.0, 4.0, 6.0]
    assert gdumb.extra["memory_min_per_class"] == [100.0, 50.0, 33.0]
    assert gdumb.extra["memory_max_per_class"] == [100.0, 50.0, 34.0]
    # the learner: a function of the memory alone, whatever its weights were before
    assert inspect.same_after_retraining == [True, True, True]
    # the epoch's validation saw the retrained learner (the stream trains nothing)
    assert min(inspect.val_acc) > 0.8, inspect.val_acc
    aa = {"ft": finetuning.acc_matrix[-1].nanmean().item(), "gdumb": gdumb.acc_matrix[-1].nanmean().item()}
    print(aa, gdumb.acc_matrix)
    # Finetuning forgets the old tasks in CIL (~0 on them); GDumb keeps them through its memory
    assert finetuning.acc_matrix[-1, :-1].max() < 0.1
    assert gdumb.acc_matrix[-1, :-1].mean() > 0.7
    assert aa["gdumb"] > aa["ft"] + 0.4, aa


@pytest.mark.slow
@pytest.mark.parametrize("paradigm", ["til", "dil"])
def test_gdumb_in_til_and_dil_sees_the_stream_once(make_config, paradigm):
    """Three stream epochs asked for: the sampler still sees each sample once. The memory is
    balanced over TIL's classes and over DIL's (task, label) pairs: task 2's domain is kept too."""
    inspect = Inspect()
    overrides = ("benchmark=split_digits", f"paradigm={paradigm}", "benchmark.num_tasks=2")
    cfg = make_config(*overrides, "trainer.max_epochs=3", "algorithm=gdumb", "algorithm.memory_epochs=20")
    results = run_sequence(cfg, extra_callbacks=[inspect])
    assert inspect.seen == inspect.stream  # each training sample offered once, not three times
    for counts, seen in zip(inspect.counts, [{0, 1}, {0, 1, 2, 3}], strict=True):
        assert _is_balanced(counts, 200, seen), counts
    assert results.acc_matrix[-1].nanmean().item() > 0.8


def test_crash_mid_sequence_resumes_exactly(make_config):
    overrides = (*TINY, "algorithm=gdumb", "algorithm.memory_size=50", "algorithm.memory_epochs=10")
    reference, resumed = crash_and_resume(make_config, *overrides)
    for name in ("memory_bytes", "memory_samples", "memory_min_per_class", "memory_max_per_class"):
        assert resumed.extra[name] == reference.extra[name]
