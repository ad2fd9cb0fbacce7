"""PackNet (Mallya & Lazebnik 2018): magnitude pruning per layer, the phases, and its guarantee that
earlier tasks' test outputs never change, through the real task loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clcore.algorithms.packnet import PackNet, magnitude_prune
from clcore.backbones.mlp import MLP
from clcore.callbacks import CLCallback
from clcore.clrun.checks import preflight
from clcore.clrun.task_loop import run_sequence
from clcore.config_rules import ConfigError
from clcore.heads.til import HeadsTIL
from tests.helpers import FailInTask

REPO = Path(__file__).resolve().parents[2]
CLRUN = str(Path(sys.executable).with_name("clrun"))


# ---- the equation: per layer, keep the largest magnitudes among the task's own weights ------------
def test_magnitude_prune_keeps_exactly_the_largest_entries_of_the_task():
    weight = torch.tensor([[0.9, -0.1, 0.5, -0.7], [0.3, -0.8, 0.05, 0.6]])
    owner = torch.tensor([[1, 2, 2, 2], [2, 1, 2, 2]], dtype=torch.int16)
    # Task 2 owns six entries: |w| = 0.1, 0.5, 0.7, 0.3, 0.05, 0.6. Half are released: 0.05, 0.1, 0.3.
    # Task 1's 0.9 and -0.8, the largest of all, are not task 2's to prune.
    expected = torch.tensor([[1, 0, 2, 2], [0, 1, 0, 2]], dtype=torch.int16)
    assert torch.equal(magnitude_prune(weight, owner, 2, 0.5), expected)
    # 75%: round(4.5) = 5 released (half up), only -0.7 stays
    expected = torch.tensor([[1, 0, 0, 2], [0, 1, 0, 0]], dtype=torch.int16)
    assert torch.equal(magnitude_prune(weight, owner, 2, 0.75), expected)
    # 0: nothing released; the owners of other tasks never change
    assert torch.equal(magnitude_prune(weight, owner, 2, 0.0), owner)
    assert torch.equal(magnitude_prune(weight, owner, 3, 0.5), owner)


def _packnet(**options) -> PackNet:
    torch.manual_seed(0)
    backbone = MLP(4, (3,), 2)
    return PackNet(backbone, HeadsTIL(2), torch.optim.SGD, num_tasks=3, **options)


def test_each_layer_is_pruned_by_the_same_fraction_and_released_weights_are_zero():
    algorithm = _packnet(prune_ratio=0.75)
    algorithm.setup_task(0, 2)
    algorithm.on_train_start()  # task 1 claims every weight
    before = {name: w.detach().clone() for name, w in algorithm.masked_weights().items()}
    assert all(bool((owner == 1).all()) for _, owner in algorithm.owner.items())
    algorithm.prune()
    kept_counts = {}
    for name, owner in algorithm.owner.items():
        weight, magnitude = algorithm.masked_weight(name).detach(), before[name].abs().flatten()
        n = magnitude.numel()
        kept = n - int(0.75 * n + 0.5)
        kept_counts[name] = kept
        # exactly the `kept` largest magnitudes of this layer, whatever the other layers hold
        assert set((owner.flatten() == 1).nonzero().flatten().tolist()) == set(
            magnitude.topk(kept).indices.tolist()
        )
        assert torch.equal(weight[owner == 0], torch.zeros(n - kept))
        assert torch.equal(weight[owner == 1], before[name][owner == 1])
    assert kept_counts == {"layers.1.weight": 3, "layers.3.weight": 1}  # 12 -> 3, 6 -> 1 (4.5 rounds up)


def test_test_time_weights_are_those_of_tasks_1_to_j():
    algorithm = _packnet()
    owners = {}
    for name, owner in algorithm.owner.items():
        owner.copy_(torch.arange(owner.numel()).remainder(4).view(owner.shape))  # owners 0, 1, 2, 3
        owners[name] = owner.clone()
    for task_id in range(3):
        for name, weight in algorithm.test_weights(task_id).items():
            used = (owners[name] >= 1) & (owners[name] <= task_id + 1)
            assert torch.equal(weight[used], algorithm.masked_weight(name).detach()[used])
            assert bool((weight[~used] == 0).all())


# ---- the phases inside one Trainer per task -------------------------------------------------------
class PhaseLog(CLCallback):
    """At the first batch of every epoch (after PackNet's epoch hook): epoch, max_epochs, the current
    task's share of the weights, the learning rate."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, int, float, float]] = []

    def on_train_batch_start(self, trainer, algorithm, batch, batch_idx):
        if batch_idx == 0:
            task = algorithm.task_id + 1
            owned = sum(int((o == task).sum()) for _, o in algorithm.owner.items())
            total = sum(o.numel() for _, o in algorithm.owner.items())
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            self.rows.append((task, trainer.current_epoch, trainer.max_epochs, owned / total, lr))


def test_train_then_prune_then_retrain_in_one_fit(make_config):
    log = PhaseLog()
    cfg = make_config(
        "algorithm=packnet",
        "benchmark.num_tasks=2",
        "trainer.max_epochs=2",
        "algorithm.retrain_epochs=1",
        "algorithm.retrain_lr_factor=0.1",
        "trainer.limit_train_batches=3",
        "save_checkpoints=false",
    )
    results = run_sequence(cfg, extra_callbacks=[log])
    # 2 train epochs on every free weight, then 1 retrain epoch on the 25% kept, at a tenth of the rate
    assert log.rows == [
        (1, 0, 3, 1.0, 1e-3),
        (1, 1, 3, 1.0, 1e-3),
        (1, 2, 3, 0.25, pytest.approx(1e-4)),
        (2, 0, 3, 0.75, 1e-3),
        (2, 1, 3, 0.75, 1e-3),
        (2, 2, 3, 0.1875, pytest.approx(1e-4)),
    ]
    assert results.extra["weights_used"] == [0.25, 0.4375]
    assert results.extra["task_weights"] == [0.25, 0.1875]


def test_without_retrain_epochs_the_task_is_pruned_at_the_end(make_config):
    cfg = make_config(
        "algorithm=packnet", "benchmark.num_tasks=2", "algorithm.retrain_epochs=0", "save_checkpoints=false"
    )
    results = run_sequence(cfg)
    assert results.extra["weights_used"] == [0.25, 0.4375]


# ---- the guarantee: earlier tasks' test outputs never change (BWT exactly 0) ----------------------
class OutputRecorder(CLCallback):
    """After every task: each seen task's test-time logits on fixed inputs."""

    def __init__(self) -> None:
        self.after_task: list[list[torch.Tensor]] = []

    def on_task_end(self, trainer, algorithm, task_id, results):
        shape = trainer.datamodule.image_shape
        inputs = torch.randn(16, *shape, generator=torch.Generator().manual_seed(7))
        was_training = algorithm.training
        algorithm.eval()
        with torch.no_grad():
            self.after_task.append([algorithm.eval_logits(inputs, j) for j in range(task_id + 1)])
        algorithm.train(was_training)


def assert_earlier_tasks_unchanged(outputs: OutputRecorder, results) -> None:
    num_tasks = len(outputs.after_task)
    for j in range(num_tasks):
        own = outputs.after_task[j][j]
        for i in range(j + 1, num_tasks):
            assert torch.equal(outputs.after_task[i][j], own), f"task {j + 1} changed after task {i + 1}"
    R = results.acc_matrix
    for j in range(num_tasks):
        assert torch.equal(R[j:, j], R[j, j].expand(num_tasks - j)), R
    assert results.summary()["bwt"] == 0.0


# The settings in which the weight-mask methods (PackNet, WSN) must leave earlier tasks untouched.
INVARIANT_SETTINGS = pytest.mark.parametrize(
    "overrides",
    [
        # Adam with L2 weight decay: the decay term alone would move every frozen weight
        ("optimizer.weight_decay=0.01",),
        # batch norm: its statistics and parameters are task 1's from then on
        ("optimizer=sgd", "optimizer.momentum=0.9", "backbone.batch_norm=true"),
        pytest.param(
            (
                "backbone=resnet18",
                "trainer.limit_train_batches=2",
                "trainer.limit_val_batches=1",
                "benchmark.eval_batch_size=64",
                "trainer.limit_test_batches=1",
            ),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["mlp-adam-weight-decay", "mlp-batchnorm-sgd-momentum", "resnet18"],
)


@INVARIANT_SETTINGS
def test_earlier_tasks_test_outputs_never_change(make_config, overrides):
    outputs = OutputRecorder()
    cfg = make_config("algorithm=packnet", "benchmark.num_tasks=3", "save_checkpoints=false", *overrides)
    results = run_sequence(cfg, extra_callbacks=[outputs])
    assert_earlier_tasks_unchanged(outputs, results)
    capacity = results.extra["weights_used"]
    assert results.extra["capacity"] == [1.0 - used for used in capacity]  # free = 1 - used, as HAT's
    assert capacity == sorted(capacity) and 0 < capacity[0] < capacity[-1] < 1
    if "backbone=resnet18" not in overrides:  # (two batches a task are too few for ResNet-18 to learn)
        # later tasks learnt something of their own, not only the chance level
        assert float(results.acc_matrix[2, 2]) > 0.3


# ---- checkpoint / resume ----------------------------------------------------------------------------
def test_crash_mid_task_resumes_to_the_same_results(make_config):
    """The ownership of tasks 1-2 is in the checkpoint; a crash in task 3 resumes exactly."""
    overrides = ("algorithm=packnet", "benchmark.num_tasks=3", "trainer.limit_train_batches=8")
    reference = run_sequence(make_config(*overrides, subdir="reference"))
    cfg = make_config(*overrides, subdir="crashed")
    with pytest.raises(RuntimeError, match="simulated crash in task 3"):
        run_sequence(cfg, extra_callbacks=[FailInTask(task=3)])
    checkpoints = sorted(p.name for p in (Path(cfg.paths.output_dir) / "checkpoints").iterdir())
    assert checkpoints == ["task_1.ckpt", "task_2.ckpt"]
    resumed = run_sequence(cfg)
    torch.testing.assert_close(resumed.acc_matrix, reference.acc_matrix, rtol=0, atol=0, equal_nan=True)
    assert resumed.extra["weights_used"] == reference.extra["weights_used"]


# ---- the command line and its refusals ----------------------------------------------------------------
def test_refused_outside_til_with_the_reason_and_bad_options_listed(make_config):
    with pytest.raises(ConfigError) as refused:
        preflight(make_config("algorithm=packnet", "paradigm=cil", "benchmark=split_digits"))
    message = str(refused.value)
    assert "PackNet does not support paradigm=cil" in message
    assert "task id at test time" in message and "paradigm=til" in message
    with pytest.raises(ConfigError) as refused:
        preflight(
            make_config(
                "algorithm=packnet",
                "algorithm.prune_ratio=1.0",
                "algorithm.retrain_epochs=-1",
                "algorithm.retrain_lr_factor=0",
            )
        )
    problems = refused.value.problems
    for key in ("algorithm.prune_ratio=1.0", "algorithm.retrain_epochs=-1", "algorithm.retrain_lr_factor=0"):
        assert sum(key in problem for problem in problems) == 1, problems
    with pytest.raises(ConfigError, match="use backbone=mlp or backbone=resnet18"):
        preflight(make_config("algorithm=packnet", "backbone=hat_mlp"))


@pytest.mark.slow
def test_clrun_algorithm_packnet_end_to_end(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            CLRUN,
            "algorithm=packnet",
            "benchmark.num_tasks=2",
            "trainer.limit_train_batches=5",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={out}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "results" / "summary.json").read_text())
    assert summary["tasks_done"] == 2 and summary["bwt"] == 0.0
    assert summary["weights_used"] == [0.25, 0.4375]
    assert "capacity" in done.stdout + done.stderr
