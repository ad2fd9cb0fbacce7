"""The reference bounds: Joint (union of tasks), Independent (a network per task), Random (untrained)."""

from __future__ import annotations

import math

import pytest
import torch
from lightning import seed_everything

from clcore.algorithms.independent import Independent
from clcore.algorithms.joint import Joint
from clcore.callbacks import CLCallback
from clcore.clrun import run_sequence
from clcore.clrun.construction import build

NO_CHECKPOINTS = "save_checkpoints=false"


class TrainingSamples(CLCallback):
    """Counts the training samples of each task id that every task's fit saw (per-sample ids or one int)."""

    def __init__(self) -> None:
        self.per_task: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        _, labels, task_ids = batch
        ids = task_ids if isinstance(task_ids, torch.Tensor) else torch.full_like(labels, task_ids)
        seen = self.per_task.setdefault(pl_module.task_id, torch.zeros(pl_module.num_tasks, dtype=torch.long))
        seen += torch.bincount(ids.cpu(), minlength=pl_module.num_tasks)


class StateAfterEachTask(CLCallback):
    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_task_end(self, trainer, algorithm, task_id, results):
        state = algorithm.state_dict()
        self.states.append({k: v.detach().clone() for k, v in state.items() if isinstance(v, torch.Tensor)})


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows in a fixed order whatever the order they came in (sorted by a random projection)."""
    flat = x.flatten(1).double()
    key = flat @ torch.randn(flat.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.double)
    return flat[key.argsort()]


# ---- Joint: the benchmark serves the union, each sample with its own task's transform -------------
def test_union_loader_serves_every_task_with_its_own_permutation(make_config):
    benchmark, _ = build(make_config("benchmark=permuted_digits", "benchmark.num_tasks=3"))
    benchmark.setup_task(2)
    benchmark.train_tasks = [0, 2]
    union = {"images": [], "labels": [], "task_ids": []}
    for batch in benchmark.train_dataloader():
        images, labels, task_ids = benchmark.on_after_batch_transfer(
            benchmark.transfer_batch_to_device(batch, torch.device("cpu"), 0), 0
        )
        assert isinstance(task_ids, torch.Tensor) and len(task_ids) == len(labels)
        union["images"].append(images)
        union["labels"].append(labels)
        union["task_ids"].append(task_ids)
    images, labels, task_ids = (torch.cat(union[key]) for key in ("images", "labels", "task_ids"))
    assert len(set(torch.cat(union["task_ids"][:1]).tolist())) > 1  # a batch mixes tasks
    for task_id in (0, 2):
        own = benchmark.task_split("train", task_id)
        rows = task_ids == task_id
        assert int(rows.sum()) == len(own.labels)  # every sample of the task, once
        own_x = benchmark.prepare_batch(own.images, task_id)
        assert torch.equal(_sorted_rows(images[rows]), _sorted_rows(own_x))
        # the check has teeth: another task's permutation gives other inputs
        assert not torch.equal(
            _sorted_rows(images[rows]), _sorted_rows(benchmark.prepare_batch(own.images, 1))
        )
        assert torch.equal(labels[rows].sort().values, own.labels.sort().values)
    assert set(task_ids.tolist()) == {0, 2}
    val = torch.cat([task_ids for _, _, task_ids in benchmark.val_dataloader()])
    val_sizes = [len(benchmark.task_split("val", t).labels) for t in (0, 2)]
    assert torch.bincount(val, minlength=3).tolist() == [val_sizes[0], 0, val_sizes[1]]
    benchmark.setup_task(2)  # a new task serves that task alone again
    assert benchmark.train_tasks is None and isinstance(next(iter(benchmark.train_dataloader()))[2], int)


def test_joint_trains_on_the_union_of_the_tasks_seen_and_beats_finetuning_in_cil(make_config):
    counter = TrainingSamples()
    cfg = make_config("algorithm=joint", "benchmark=split_digits", "paradigm=cil", NO_CHECKPOINTS)
    joint = run_sequence(cfg, extra_callbacks=[counter])
    benchmark, _ = build(cfg)
    sizes = [len(benchmark.task_split("train", t).labels) for t in range(5)]
    for task_id in range(5):  # one epoch at task t: every sample of tasks 1..t once, none of later tasks
        assert counter.per_task[task_id].tolist() == sizes[: task_id + 1] + [0] * (4 - task_id)
    finetuning = run_sequence(
        make_config(
            "algorithm=finetuning", "benchmark=split_digits", "paradigm=cil", NO_CHECKPOINTS, subdir="ft"
        )
    )
    # CIL: Finetuning keeps only the last task (AA ~0.2), the union keeps them all
    assert joint.summary()["average_accuracy"] > finetuning.summary()["average_accuracy"] + 0.4


@pytest.mark.parametrize("paradigm", ["til", "dil"])
def test_joint_all_at_once_trains_once_and_every_column_is_constant(make_config, paradigm):
    counter = TrainingSamples()
    cfg = make_config(
        "algorithm=joint",
        "algorithm.all_at_once=true",
        "benchmark=split_digits",
        f"paradigm={paradigm}",
        NO_CHECKPOINTS,
    )
    results = run_sequence(cfg, extra_callbacks=[counter])
    benchmark, _ = build(cfg)
    assert list(counter.per_task) == [0]  # trained at task 1 only, on everything
    assert counter.per_task[0].tolist() == [len(benchmark.task_split("train", t).labels) for t in range(5)]
    R = results.acc_matrix
    for j in range(5):
        assert torch.equal(R[j:, j], R[j, j].expand(5 - j))
    assert results.summary()["bwt"] == 0.0
    assert results.summary()["average_accuracy"] > 0.8


def test_joint_refuses_a_non_boolean_option():
    assert Joint.config_problems({"all_at_once": "yes"}, paradigm="til")
    assert Joint.config_problems({"all_at_once": True}, paradigm="cil") == []


# ---- Independent ------------------------------------------------------------------------------------
def test_independent_copies_start_from_the_same_initial_network(make_config):
    _, algorithm = build(make_config("algorithm=independent", "benchmark=split_digits"))
    initial = algorithm.backbone.state_dict()
    assert len(algorithm.task_backbones) == 5
    for copy in algorithm.task_backbones:
        assert copy is not algorithm.backbone
        assert all(torch.equal(v, copy.state_dict()[k]) for k, v in initial.items())
    assert Independent.config_problems({}, paradigm="cil") and Independent.config_problems({}, paradigm="dil")


def test_independent_never_changes_an_earlier_task(make_config):
    states = StateAfterEachTask()
    results = run_sequence(
        make_config("algorithm=independent", "benchmark=split_digits", "paradigm=til", NO_CHECKPOINTS),
        extra_callbacks=[states],
    )
    R = results.acc_matrix
    for j in range(5):  # earlier tasks' accuracy exactly as when they were learned
        assert torch.equal(R[j:, j], R[j, j].expand(5 - j))
    assert R.diagonal().min() > 0.8
    for task_id in range(4):  # task t's network and head: bit-identical from its end to the run's end
        prefixes = (f"task_backbones.{task_id}.", f"heads.heads.{task_id}.")
        mine = {k: v for k, v in states.states[task_id].items() if k.startswith(prefixes)}
        assert mine and all(torch.equal(v, states.states[-1][k]) for k, v in mine.items())
        # and it did train: different from the next task's network
        nxt = states.states[-1]
        assert any(
            not torch.equal(v, nxt[k.replace(f"backbones.{task_id}.", f"backbones.{task_id + 1}.")])
            for k, v in mine.items()
            if k.startswith("task_backbones")
        )


# ---- Random -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("paradigm", ["til", "cil", "dil"])
def test_random_row_is_the_untrained_model(make_config, paradigm):
    states = StateAfterEachTask()
    cfg = make_config("algorithm=random", "benchmark=split_digits", f"paradigm={paradigm}", NO_CHECKPOINTS)
    results = run_sequence(cfg, extra_callbacks=[states])
    # The same model built again, heads grown in the same order, never trained
    seed_everything(cfg.seed, verbose=False)
    benchmark, untrained = build(cfg)
    for task_id in range(5):
        untrained.setup_task(task_id, benchmark.num_classes_of(task_id))
    expected = untrained.state_dict()
    assert all(
        torch.equal(v, states.states[-1][k]) for k, v in expected.items() if isinstance(v, torch.Tensor)
    )
    untrained.eval()
    with torch.no_grad():
        for task_id in range(5):
            test = benchmark.task_split("test", task_id)
            logits = untrained(benchmark.prepare_batch(test.images, task_id), task_id)
            accuracy = (logits.argmax(-1) == untrained.heads.targets(test.labels, task_id)).double().mean()
            assert float(results.acc_matrix[-1, task_id]) == pytest.approx(float(accuracy), abs=1e-9)
    if paradigm != "cil":  # chance level, and nothing moves
        assert math.isclose(results.summary()["average_accuracy"], 0.5, abs_tol=0.15)
        assert results.summary()["bwt"] == 0.0
