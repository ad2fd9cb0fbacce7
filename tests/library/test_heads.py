"""Heads per paradigm: shapes, targets, growth, and reloading a grown head."""

import pytest
import torch

from clcore.heads import HeadDIL, HeadsCIL, HeadsTIL


def test_til_one_head_per_task():
    heads = HeadsTIL(input_dim=8)
    heads.setup_task(0, 2)
    heads.setup_task(1, 5)
    features = torch.randn(3, 8)
    assert heads(features, 0).shape == (3, 2)
    assert heads(features, 1).shape == (3, 5)
    assert torch.equal(heads.targets(torch.tensor([1, 0]), 1), torch.tensor([1, 0]))
    with pytest.raises(IndexError, match="no head for task 3"):
        heads(features, 2)


def test_cil_head_grows_and_predicts_over_all_seen_classes():
    heads = HeadsCIL(input_dim=8)
    heads.setup_task(0, 2)
    first_block = heads.blocks[0].weight.detach().clone()
    features = torch.randn(4, 8)
    assert heads(features, 0).shape == (4, 2)
    heads.setup_task(1, 3)
    logits = heads(features, task_id=None)
    assert logits.shape == (4, 5)  # logits over all 5 classes seen so far, whatever the task
    assert torch.equal(heads.blocks[0].weight, first_block)  # growth keeps the old classes' weights
    assert torch.equal(logits[:, :2], features @ first_block.T + heads.blocks[0].bias)
    # local label 1 of task 2 is global class 2 + 1 = 3
    assert heads.targets(torch.tensor([0, 1, 2]), 1).tolist() == [2, 3, 4]
    # argmax can land on an old task's class: the prediction really is over all seen classes
    heads.blocks[0].bias.data.fill_(100.0)
    assert heads(features).argmax(-1).max() < 2


def test_dil_shared_head_and_mismatch_error():
    heads = HeadDIL(input_dim=8)
    heads.setup_task(0, 10)
    heads.setup_task(1, 10)
    assert heads(torch.randn(2, 8), 1).shape == (2, 10)
    with pytest.raises(ValueError, match="same classes in every task"):
        heads.setup_task(2, 5)


def test_grown_heads_reload_from_state_dict():
    heads = HeadsCIL(input_dim=4)
    for t, n in enumerate([2, 3, 1]):
        heads.setup_task(t, n)
    fresh = HeadsCIL(input_dim=4)
    fresh.load_state_dict(heads.state_dict())
    x = torch.randn(5, 4)
    assert fresh.classes_per_task == [2, 3, 1]
    assert torch.equal(fresh(x), heads(x))


def test_tasks_must_be_set_up_in_order():
    heads = HeadsTIL(input_dim=4)
    with pytest.raises(ValueError, match="expected task 1, got 2"):
        heads.setup_task(1, 2)


def test_task_class_offsets_follow_the_heads_as_they_grow():
    heads = HeadsTIL(4)
    heads.setup_task(0, 2)
    heads.setup_task(1, 3)
    assert heads.task_class_offsets("cpu").tolist() == [0, 2, 5]
    heads.setup_task(2, 4)  # grown: the cached offsets are rebuilt
    assert heads.task_class_offsets("cpu").tolist() == [0, 2, 5, 9]
