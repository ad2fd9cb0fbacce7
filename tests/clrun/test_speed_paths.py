"""The shortcuts taken for speed (issue 4) keep Lightning's behaviour: same objects, same logs."""

import csv

import pytest
import torch
from lightning import Callback, Trainer
from lightning.fabric.utilities import registry
from lightning.pytorch.profilers import SimpleProfiler
from torch import nn

from clcore import lightning_speed
from clcore.clrun.construction import build
from clcore.clrun.task_loop import run_sequence
from clcore.lightning_speed import NullProfiler, entry_points_looked_up_once


class _Marker(Callback):
    """What an installed package's ``lightning.pytorch.callbacks_factory`` entry point returns."""


class _FakeEntryPoint:
    name = "fake"

    def load(self):
        return _Marker


def test_entry_points_are_read_once_per_block_and_every_trainer_gets_fresh_callbacks(monkeypatch):
    reads = []

    def entry_points(*, group):
        reads.append(group)
        return [_FakeEntryPoint()] if group == "lightning.pytorch.callbacks_factory" else []

    monkeypatch.setattr(registry, "entry_points", entry_points)
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    with entry_points_looked_up_once():
        trainers = [Trainer(**quiet) for _ in range(3)]
    assert reads == ["lightning.pytorch.callbacks_factory"]  # one read for three Trainers
    markers = [next(c for c in t.callbacks if isinstance(c, _Marker)) for t in trainers]
    assert len({id(m) for m in markers}) == 3  # the factory still ran for each Trainer
    assert registry.entry_points is entry_points  # restored after the block
    Trainer(**quiet)
    assert len(reads) == 2  # outside the block Lightning reads them again


def test_null_profiler_is_the_default_and_a_configured_profiler_wins(make_config):
    seen = {}

    class Spy(Callback):
        def on_fit_start(self, trainer, pl_module):
            seen.setdefault("profilers", []).append(trainer.profiler)

    run_sequence(make_config("benchmark.num_tasks=1", "trainer.max_epochs=1"), extra_callbacks=[Spy()])
    assert type(seen["profilers"][-1]) is NullProfiler
    with seen["profilers"][-1].profile("anything") as entered:  # a working context manager
        assert entered is None

    seen.clear()
    run_sequence(
        make_config(
            "benchmark.num_tasks=1", "trainer.max_epochs=1", "trainer.profiler=simple", subdir="simple"
        ),
        extra_callbacks=[Spy()],
    )
    assert isinstance(seen["profilers"][-1], SimpleProfiler)


def test_plain_attributes_bypass_the_module_registry_but_modules_still_register(make_config):
    _, algorithm = build(make_config())
    algorithm._current_fx_name = "training_step"
    assert algorithm.__dict__["_current_fx_name"] == "training_step"
    algorithm._loss_sum_since_check = torch.tensor(2.5)
    assert "_loss_sum_since_check" not in algorithm._buffers
    algorithm.extra_layer = nn.Linear(2, 2)  # any other name takes nn.Module's path
    assert "extra_layer" in algorithm._modules
    assert any(name.startswith("extra_layer.") for name, _ in algorithm.named_parameters())


def test_batch_transfer_moves_both_tensors_and_keeps_the_task_id(make_config):
    benchmark, _ = build(make_config())
    benchmark.setup_task(0)
    images, labels, task_id = next(iter(benchmark.train_dataloader()))
    same = benchmark.transfer_batch_to_device((images, labels, task_id), torch.device("cpu"), 0)
    assert same[0] is images and same[1] is labels and same[2] == task_id  # already there: no copy
    moved = benchmark.transfer_batch_to_device((images, labels, task_id), torch.device("meta"), 0)
    assert moved[0].device.type == "meta" and moved[1].device.type == "meta"
    assert moved[0].shape == images.shape and moved[0].dtype == images.dtype and moved[2] == task_id


@pytest.mark.slow
def test_test_accuracy_curves_are_the_accuracy_matrix_columns(make_config, tmp_path):
    # zero-shot tests run the untrained model too: they must not reach test/acc/task_<j>
    cfg = make_config("benchmark.num_tasks=3", "trainer.max_epochs=1", "logger=csv", "eval.zero_shot=true")
    results = run_sequence(cfg)
    with open(tmp_path / "run" / "logs" / "metrics.csv") as stream:
        rows = list(csv.DictReader(stream))
    for j in range(3):
        curve = [
            (int(r["step"]), float(r[f"test/acc/task_{j + 1}"])) for r in rows if r[f"test/acc/task_{j + 1}"]
        ]
        # one point per task done since task j, equal to R[t, j], at the step after task t's last
        # training step, which its checkpoint records for a resumed run to continue from
        task_end_steps = [
            torch.load(tmp_path / "run" / "checkpoints" / f"task_{t + 1}.ckpt", weights_only=True)[
                "logging_step"
            ]
            for t in range(3)
        ]
        expected = [(task_end_steps[t], pytest.approx(float(results.acc_matrix[t, j]))) for t in range(j, 3)]
        assert curve == expected


@pytest.mark.parametrize(
    "losses, stops",
    [
        ([1.0, 2.0, 3.0], False),
        ([1.0, float("inf"), 2.0], True),
        ([float("inf"), float("-inf"), 1.0], True),  # the sum is NaN: still caught
        ([2.0, float("nan"), 1.0], True),
    ],
)
def test_running_loss_sum_catches_any_nonfinite_loss_at_the_check(make_config, losses, stops):
    from types import SimpleNamespace

    from clcore.algorithms.base import NonFiniteLossError

    _, algorithm = build(make_config())
    algorithm.setup_task(0, 10)
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision)
    algorithm._trainer = SimpleNamespace(num_training_batches=len(losses), strategy=strategy)
    feed = [
        torch.tensor(loss, dtype=torch.float16 if i == 0 else torch.float32) for i, loss in enumerate(losses)
    ]
    for batch_idx, loss in enumerate(feed[:-1]):  # no check before the epoch's last batch
        algorithm.on_train_batch_end(loss, None, batch_idx)
    if stops:
        with pytest.raises(NonFiniteLossError, match=f"batches 1..{len(losses)}"):
            algorithm.on_train_batch_end(feed[-1], None, len(losses) - 1)
    else:
        algorithm.on_train_batch_end(feed[-1], None, len(losses) - 1)
    assert algorithm._loss_sum_since_check is None  # read and reset at the check


def test_normalise_in_place_is_bit_identical_to_the_formula_and_leaves_the_data_alone(make_config):
    benchmark, _ = build(make_config())
    benchmark.setup_task(0)
    images = next(iter(benchmark.test_dataloader()[0]))[0]
    before = images.clone()
    mean, std = benchmark._mean, benchmark._std
    assert torch.equal(benchmark.normalise(images), (images.float() / 255.0 - mean) / std)
    assert torch.equal(images, before)  # the stored uint8 pixels are untouched


def test_a_source_with_float_images_is_refused_with_what_to_do():
    from clcore.benchmarks.sources import ImageData

    good = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"uint8 tensor \[N, C, H, W\]"):
        ImageData("mine", good.float(), torch.zeros(4), good, torch.zeros(4), 10, (0.5,), (0.2,))
    with pytest.raises(ValueError, match="4 test images but 3 labels"):
        ImageData("mine", good, torch.zeros(4), good, torch.zeros(3), 10, (0.5,), (0.2,))


@pytest.mark.parametrize("version", ["2.3.0", "2.7.0", "3.0.0", "not-a-version"])
def test_speedups_fall_back_to_plain_lightning_outside_the_tested_releases(monkeypatch, version):
    """A Lightning whose internals may have changed gets Lightning's own behaviour, untouched."""
    assert lightning_speed.speedups_apply()  # the installed release is a tested one
    assert not lightning_speed.speedups_apply(version)
    monkeypatch.setattr(lightning_speed.lightning, "__version__", version)
    original = registry.entry_points
    with entry_points_looked_up_once():
        assert registry.entry_points is original  # not replaced by the cached lookup
    assert lightning_speed.default_profiler() == {}  # Trainer keeps Lightning's default profiler
    assert lightning_speed.per_step_attributes() == frozenset()
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    lightning_speed.use_cached_cuda_check()
    assert lightning_speed.os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"


def test_plain_lightning_variable_switches_every_speedup_off(monkeypatch, make_config):
    seen = {}

    class Spy(Callback):
        def on_fit_start(self, trainer, pl_module):
            seen["profiler"] = trainer.profiler

    fast = run_sequence(make_config("benchmark.num_tasks=2", "trainer.max_epochs=1", subdir="plain"))
    assert fast.tasks_done == 2
    monkeypatch.setenv(lightning_speed.PLAIN_LIGHTNING_VARIABLE, "1")
    assert not lightning_speed.speedups_apply()
    plain = run_sequence(
        make_config("benchmark.num_tasks=2", "trainer.max_epochs=1", subdir="plain2"), [Spy()]
    )
    assert type(seen["profiler"]) is not NullProfiler
    assert torch.equal(fast.acc_matrix.nan_to_num(-1), plain.acc_matrix.nan_to_num(-1))  # same numbers


# What a plain run builds before its first batch, in a fresh interpreter: the config, the pre-flight
# check with its data, the model, the callbacks, the loggers and a Trainer. A spy on ``import``
# records every import that a clcore module itself asks for, so it also catches a package that
# Lightning happens to have loaded already (this environment's Lightning imports matplotlib).
_BUILD_A_RUN = """
import builtins, json, sys
HEAVY = {"matplotlib", "open_clip", "captum", "sklearn", "wandb", "tensorboard", "torchvision", "optuna", "pandas"}
asked = []
real_import = builtins.__import__

def spy(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__") or ""
    if level == 0 and importer.startswith("clcore") and name.split(".")[0] in HEAVY:
        asked.append([importer, name])
    return real_import(name, globals, locals, fromlist, level)

builtins.__import__ = spy
from clcore.clrun.checks import preflight
from clcore.clrun.cli import compose
from clcore.clrun.instantiate import instantiate_group
from clcore.clrun.construction import build
from hydra.utils import instantiate

cfg = compose(sys.argv[2:], output_dir=sys.argv[1])
plan = preflight(cfg)
build(cfg, plan.benchmark)
callbacks = instantiate_group(cfg.get("callbacks"))
instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate_group(cfg.get("logger")) or False)
print(json.dumps({"asked": asked, "loaded": sorted(m for m in ("open_clip", "captum", "wandb") if m in sys.modules)}))
"""


@pytest.mark.parametrize(
    "overrides",
    [
        [],  # plain `clrun`: Finetuning on Permuted Digits, every default callback and the CSV logger
        ["experiment=hat_pmnist", "benchmark.source=digits", "benchmark.root=null"],  # + HAT's mask plots
    ],
)
def test_a_run_imports_no_optional_package_before_it_needs_one(tmp_path, overrides):
    """Plots import matplotlib when they draw, CLIP / captum / wandb only when configured.

    The digits (scikit-learn's data set) are the one optional import a plain run needs, from their loader.
    """
    import json
    import subprocess
    import sys

    command = [sys.executable, "-c", _BUILD_A_RUN, str(tmp_path), *overrides]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    unexpected = [
        (importer, name)
        for importer, name in result["asked"]
        if not (importer == "clcore.benchmarks.sources" and name.startswith("sklearn."))
    ]
    assert not unexpected, f"imported before they are needed: {unexpected}"
    assert result["loaded"] == []
