"""ReplayMemory: reservoir sampling (Vitter's Algorithm R), its own generator, checkpointing."""

from __future__ import annotations

import pytest
import torch

from clcore.components.replay_memory import ReplayMemory, replay_logits, replay_targets
from clcore.heads.cil import HeadsCIL
from clcore.heads.til import HeadsTIL


def _stream(memory: ReplayMemory, n: int, batch: int) -> None:
    for start in range(0, n, batch):
        ids = torch.arange(start, min(start + batch, n))
        memory.add(ids.float().unsqueeze(1), ids, 0)


def test_reservoir_keeps_each_sample_with_probability_m_over_n():
    """m=10, n=100, streamed in uneven batches of 7; 2000 runs with seeds 0..1999.

    Each sample's inclusion count is Binomial(2000, 0.1): standard deviation of its frequency
    sqrt(0.1 * 0.9 / 2000) = 0.0067. A tolerance of 0.03 is 4.5 standard deviations: a correct
    reservoir breaks it for one of the 100 samples with probability < 1e-3 (and the seeds are
    fixed), while a biased policy (e.g. keeping the last m, or the first m) is off by 0.1 to 0.9.
    """
    m, n, runs = 10, 100, 2000
    counts = torch.zeros(n)
    for seed in range(runs):
        memory = ReplayMemory(m, seed=seed)
        _stream(memory, n, batch=7)
        kept = memory.labels
        assert kept.unique().numel() == m  # m distinct samples of the stream
        counts[kept] += 1
    frequency = counts / runs
    assert (frequency - m / n).abs().max() < 0.03, frequency


def test_memory_fills_in_order_while_n_le_m():
    memory = ReplayMemory(10, seed=0)
    _stream(memory, 4, batch=3)
    assert len(memory) == 4 and memory.seen == 4
    assert memory.labels[:4].tolist() == [0, 1, 2, 3]
    _stream_ids = torch.arange(4, 10)
    memory.add(_stream_ids.float().unsqueeze(1), _stream_ids, 1)
    assert len(memory) == 10 and memory.labels.tolist() == list(range(10))
    assert memory.task_ids.tolist() == [0] * 4 + [1] * 6
    assert memory.inputs.squeeze(1).tolist() == [float(i) for i in range(10)]


def test_a_batch_at_once_equals_one_sample_at_a_time():
    """The vectorised add (the later sample wins a slot picked twice) is Algorithm R exactly."""
    together, alone = ReplayMemory(5, seed=3), ReplayMemory(5, seed=3)
    _stream(together, 200, batch=64)
    _stream(alone, 200, batch=1)
    assert torch.equal(together.labels, alone.labels)


def test_memory_does_not_touch_the_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    memory = ReplayMemory(4, seed=1)
    _stream(memory, 50, batch=8)
    memory.sample(3)
    assert torch.equal(torch.rand(3), expected)


def test_state_dict_restores_contents_and_generator():
    memory = ReplayMemory(8, seed=5)
    _stream(memory, 30, batch=4)
    fresh = ReplayMemory(8, seed=99)
    fresh.load_state_dict(memory.state_dict())
    assert fresh.seen == 30 and torch.equal(fresh.labels, memory.labels)
    _stream_more = torch.arange(30, 60)
    for m in (memory, fresh):
        m.add(_stream_more.float().unsqueeze(1), _stream_more, 2)
    assert torch.equal(fresh.labels, memory.labels)
    assert torch.equal(fresh.sample(5)["labels"], memory.sample(5)["labels"])


def test_sample_is_distinct_stored_samples_and_bytes_are_reported():
    memory = ReplayMemory(6, seed=0)
    x = torch.arange(12, dtype=torch.uint8).view(12, 1)
    memory.add(x, torch.arange(12), 0, logits=torch.randn(12, 3))
    batch = memory.sample(4)
    assert batch["labels"].unique().numel() == 4
    assert batch["inputs"].dtype == torch.uint8 and batch["logits"].shape == (4, 3)
    # inputs (uint8), labels, task ids, class ids, widths (int64), logits (float32)
    assert memory.memory_bytes() == 6 * 1 + 6 * 8 * 4 + 6 * 3 * 4
    assert memory.sample(100)["labels"].numel() == 6


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_memory_size_must_be_positive_integer(size):
    with pytest.raises(ValueError, match="memory_size"):
        ReplayMemory(size)


def test_logits_widen_when_the_head_grows():
    memory = ReplayMemory(4, seed=0)
    memory.add(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), 0, logits=torch.ones(4, 2))
    memory.add(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), 1, logits=torch.full((4, 4), 2.0))
    assert memory.logits.shape == (4, 4)
    for row, width in zip(memory.logits, memory.logit_widths, strict=True):
        assert row[width:].abs().sum() == 0 and (row[:width] == (1.0 if width == 2 else 2.0)).all()


def test_til_memory_batch_goes_through_each_samples_own_head():
    heads = HeadsTIL(3)
    heads.setup_task(0, 2)
    heads.setup_task(1, 3)
    features = torch.randn(4, 3)
    task_ids = torch.tensor([1, 0, 1, 0])
    logits, valid = replay_logits(heads, features, task_ids)
    for i, t in enumerate(task_ids.tolist()):
        width = heads.classes_per_task[t]
        torch.testing.assert_close(logits[i, :width], heads(features[i : i + 1], t)[0])
        assert valid[i].tolist() == [c < width for c in range(3)]
    assert replay_targets(heads, torch.tensor([1, 0, 2, 1]), task_ids).tolist() == [1, 0, 2, 1]


def test_cil_targets_add_each_samples_class_offset():
    heads = HeadsCIL(3)
    for t in range(3):
        heads.setup_task(t, 2)
    targets = replay_targets(heads, torch.tensor([1, 0, 1]), torch.tensor([0, 2, 1]))
    assert targets.tolist() == [1, 4, 3]
