"""Replay stores the benchmark's uint8 images and prepares a memory sample as its own task's input."""

from __future__ import annotations

import torch

from clcore.algorithms.replay import ReplayAlgorithm
from clcore.callbacks import CLCallback
from clcore.clrun.task_loop import run_sequence

TINY = ("trainer.max_epochs=1", "benchmark.num_tasks=3")


class CaptureReplay(CLCallback):
    """Keeps the algorithm, the benchmark and, in task 2, the first replay step's backbone input."""

    def __init__(self) -> None:
        self.algorithm = self.benchmark = None
        self.backbone_inputs: list[torch.Tensor] = []
        self.training_batches: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.algorithm, self.benchmark = pl_module, trainer.datamodule
        if pl_module.task_id == 1 and not self.backbone_inputs:
            self.training_batches.append(batch[0])
            handle = pl_module.backbone.register_forward_pre_hook(
                lambda module, args: self.backbone_inputs.append(args[0].detach().clone())
            )
            self._handle = handle

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if getattr(self, "_handle", None) is not None:
            self._handle.remove()
            self._handle = None


def test_the_memory_holds_uint8_images_of_the_training_set(make_config):
    capture = CaptureReplay()
    run_sequence(make_config("benchmark=split_digits", "paradigm=cil", "algorithm=er", *TINY), [capture])
    memory, benchmark = capture.algorithm.memory, capture.benchmark
    held = memory.contents()
    assert held["inputs"].dtype == torch.uint8 and len(memory) == 200
    # every stored image is an image of its task's training split, with its label
    for task_id in range(3):
        split = benchmark.task_split("train", task_id)
        rows = held["task_ids"] == task_id
        assert rows.any()
        stored = held["inputs"][rows].flatten(1)
        match = (stored.unsqueeze(1) == split.images.flatten(1).unsqueeze(0)).all(-1)  # [k, n]
        assert match.any(1).all()
        labels_of_match = split.labels[match.float().argmax(1)]
        assert torch.equal(labels_of_match, held["labels"][rows])
    # the footprint reported: 200 images of 1x8x8 bytes, and labels, task ids, class ids as int64
    assert memory.memory_bytes() == 200 * 64 + 3 * 200 * 8


def test_a_memory_sample_gets_its_own_tasks_transform(make_config):
    """Permuted Digits, ER: the backbone's input in task 2 is the current batch prepared with
    permutation 2, then memory samples from task 1 prepared with permutation 1."""
    capture = CaptureReplay()
    cfg = make_config("benchmark=permuted_digits", "paradigm=til", "algorithm=er", *TINY)
    run_sequence(cfg, [capture])
    benchmark = capture.benchmark
    (inputs,) = capture.backbone_inputs
    (current,) = capture.training_batches
    assert current.dtype == torch.uint8  # the algorithm receives the images as the loader holds them
    size = current.shape[0]
    torch.testing.assert_close(inputs[:size], benchmark.prepare_batch(current, 1), rtol=0, atol=0)
    # the memory rows: each equals prepare_batch(task 1) of some stored task-1 image, never task 2's
    memory_rows = inputs[size:]
    assert memory_rows.shape[0] == size
    split = benchmark.task_split("train", 0)
    as_task_1 = benchmark.prepare_batch(split.images, 0).flatten(1)
    as_task_2 = benchmark.prepare_batch(split.images, 1).flatten(1)
    # exact nearest distance (cdist's matrix-product form leaves ~1e-3 of rounding)
    distance_1 = (memory_rows.flatten(1).unsqueeze(1) - as_task_1).abs().amax(-1).min(1).values
    distance_2 = (memory_rows.flatten(1).unsqueeze(1) - as_task_2).abs().amax(-1).min(1).values
    assert distance_1.max() == 0 and distance_2.min() > 1


def test_validation_and_test_batches_still_arrive_prepared(make_config):
    seen = {}

    class Record(CLCallback):
        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen["val"] = batch[0].dtype

        def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen["test"] = batch[0].dtype

    run_sequence(make_config("benchmark=split_digits", "paradigm=cil", "algorithm=derpp", *TINY), [Record()])
    assert seen == {"val": torch.float32, "test": torch.float32}
    assert ReplayAlgorithm.prepares_training_inputs


def test_a_split_benchmark_prepares_a_mixed_batch_in_one_call(make_config):
    """Split's transform is the same for every task: the one-call path equals the per-task loop."""
    capture = CaptureReplay()
    run_sequence(make_config("benchmark=split_digits", "paradigm=cil", "algorithm=er", *TINY), [capture])
    benchmark, held = capture.benchmark, capture.algorithm.memory.contents()
    one_call = benchmark.prepare_mixed_batch(held["inputs"], held["task_ids"])
    benchmark.transform_depends_on_task = True  # the per-task loop, on this instance only
    per_task = benchmark.prepare_mixed_batch(held["inputs"], held["task_ids"])
    torch.testing.assert_close(one_call, per_task, rtol=0, atol=0)
