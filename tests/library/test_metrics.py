"""The continual-learning metrics against hand-computed values on a hand-made matrix."""

import math

import pytest
import torch

from clcore.metrics import (
    ContinualResults,
    TaskAccuracy,
    average_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    top1_accuracy,
)

NAN = float("nan")
# R[i, j]: accuracy on task j after training task i (0-based here).
R = torch.tensor(
    [
        [0.90, NAN, NAN],
        [0.70, 0.80, NAN],
        [0.60, 0.75, 0.95],
    ],
    dtype=torch.float64,
)


def test_average_accuracy_per_step():
    expected = [0.90, (0.70 + 0.80) / 2, (0.60 + 0.75 + 0.95) / 3]
    assert average_accuracy(R).tolist() == pytest.approx(expected)


def test_backward_transfer():
    # 1/(T-1) sum_{j<T} (R[T, j] - R[j, j]) = ((0.60 - 0.90) + (0.75 - 0.80)) / 2
    assert backward_transfer(R) == pytest.approx(-0.175)
    assert math.isnan(backward_transfer(R[:1, :1]))


def test_forgetting_uses_the_best_earlier_accuracy():
    # task 1: max(0.90, 0.70) - 0.60 = 0.30; task 2: max(0.80) - 0.75 = 0.05
    assert forgetting(R).tolist() == pytest.approx([0.30, 0.05])
    # a task that improved after its own training is measured against its best earlier value
    R2 = R.clone()
    R2[1, 0] = 0.95
    assert forgetting(R2).tolist() == pytest.approx([0.35, 0.05])


def test_forward_transfer():
    before = torch.tensor([NAN, 0.30, 0.40], dtype=torch.float64)  # R[j-1, j]
    untrained = torch.tensor([NAN, 0.10, 0.10], dtype=torch.float64)  # b_j
    assert forward_transfer(R, before, untrained) == pytest.approx(((0.30 - 0.10) + (0.40 - 0.10)) / 2)


def test_results_summary_and_csv():
    results = ContinualResults(num_tasks=4)
    for i in range(3):
        results.record_row(i, torch.nan_to_num(R[i], nan=0.0))
    summary = results.summary()
    assert summary["tasks_done"] == 3
    assert summary["average_accuracy"] == pytest.approx((0.60 + 0.75 + 0.95) / 3)
    assert summary["bwt"] == pytest.approx(-0.175)
    assert summary["forgetting_per_task"] == pytest.approx([0.30, 0.05])
    lines = results.acc_matrix_csv().splitlines()
    assert lines[0] == "after_task,task_1,task_2,task_3,task_4"
    assert lines[1] == "1,0.900000,,,"  # empty cells where j > i
    assert lines[3] == "3,0.600000,0.750000,0.950000,"
    restored = ContinualResults.from_state_dict(results.state_dict())
    assert restored.summary() == summary


def test_record_row_refuses_a_missing_task():
    results = ContinualResults(num_tasks=2)
    with pytest.raises(RuntimeError, match="task\\(s\\) \\[2\\]"):
        results.record_row(1, torch.tensor([0.5, NAN]))


def test_task_accuracy_metric_per_task():
    metric = TaskAccuracy(num_tasks=3)
    metric.update(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0]), task_id=0)  # 3/4
    metric.update(torch.tensor([2, 2]), torch.tensor([2, 1]), task_id=2)  # 1/2
    metric.update(torch.tensor([1]), torch.tensor([1]), task_id=0)  # task 0 now 4/5
    accuracy = metric.compute()
    assert accuracy[0].item() == pytest.approx(0.8)
    assert math.isnan(accuracy[1].item())
    assert accuracy[2].item() == pytest.approx(0.5)


def test_top1_accuracy_counts_argmax_hits_over_uneven_batches():
    # argmax per row: 2, 0, 1 | 1, 1, 0, 2 against targets 2, 1, 1 | 1, 0, 0, 0: 4 hits of 7
    first = (torch.tensor([[0.1, 0.2, 0.9], [3.0, 1.0, 0.0], [0.0, 5.0, 1.0]]), torch.tensor([2, 1, 1]))
    second = (
        torch.tensor([[0.0, 1.0, 0.5], [0.2, 0.3, 0.1], [9.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
        torch.tensor([1, 0, 0, 0]),
    )
    assert top1_accuracy([first, second]) == 4 / 7
    assert top1_accuracy([second, first]) == 4 / 7


def test_top1_accuracy_is_the_python_fraction_bit_for_bit():
    """float64 from integer counts: exactly ``correct / seen`` as the evaluations computed it before."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1001, 10, generator=generator)
    targets = torch.randint(0, 10, (1001,), generator=generator)
    correct = int((logits.argmax(dim=1) == targets).sum())
    for size in (1, 7, 256, 1001):
        batches = zip(logits.split(size), targets.split(size))
        assert top1_accuracy(batches) == correct / 1001


def test_top1_accuracy_refuses_no_samples():
    with pytest.raises(ValueError, match="at least one sample"):
        top1_accuracy([])
    with pytest.raises(ValueError, match="at least one sample"):
        top1_accuracy([(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))])


def test_tak_task_accuracy_is_the_hand_count():
    from clcore.algorithms.tak.evaluation import task_accuracy
    from clcore.benchmarks import SplitBenchmark

    benchmark = SplitBenchmark("digits", num_tasks=5, classes_per_task=2, eval_batch_size=32, seed=0)
    benchmark.load()
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 2)

    def logits(x, task_id):
        return layer(x.flatten(1))

    for task in (0, 3):
        split = benchmark.task_split("test", task)
        with torch.no_grad():
            hits = logits(benchmark.prepare_batch(split.images, task), task).argmax(dim=1) == split.labels
        measured = task_accuracy(benchmark, task, logits, lambda labels, _task: labels, torch.device("cpu"))
        assert 0 < int(hits.sum()) < len(hits)
        assert measured == int(hits.sum()) / len(hits)


def test_summary_with_zero_shot_evaluation_is_valid_json():
    import json

    results = ContinualResults(num_tasks=2)
    results.record_row(0, torch.tensor([0.9, NAN]))
    results.record_row(1, torch.tensor([0.7, 0.8]))
    results.acc_before_training[1], results.acc_untrained[1] = 0.3, 0.1
    summary = json.loads(json.dumps(results.summary(), allow_nan=False))
    assert summary["fwt"] == pytest.approx(0.2)
    assert summary["accuracy_before_training"] == [None, pytest.approx(0.3)]
