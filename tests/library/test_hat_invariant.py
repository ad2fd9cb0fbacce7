"""HAT's guarantee (Serra et al. 2018, Sec. 2.3): in TIL with binary test masks, Eq. 2 and a fresh
optimizer per task, training later tasks does not change earlier tasks' test outputs at all.

Trained with real Lightning Trainers, one per task, as the pipeline does; logits are compared
with ``torch.equal`` (bit-identical), not a tolerance.
"""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch

from clcore.algorithms.hat import HAT
from clcore.backbones.hat_mlp import HATMaskMLP
from clcore.backbones.hat_resnet import HATMaskResNet18
from clcore.callbacks.hat_masks import HATMaskPlots
from clcore.heads.til import HeadsTIL
from tests.helpers import Batches, quiet_trainer

NUM_TASKS = 3


def task_data(task_id: int, input_shape: tuple[int, ...], num_batches: int = 4, batch_size: int = 8):
    generator = torch.Generator().manual_seed(100 + task_id)
    return [
        (
            torch.randn(batch_size, *input_shape, generator=generator),
            torch.randint(0, 2, (batch_size,), generator=generator),
            task_id,
        )
        for _ in range(num_batches)
    ]


def make_trainer(root) -> L.Trainer:
    return quiet_trainer(num_sanity_val_steps=1, default_root_dir=root)


def make_backbone(kind: str):
    if kind == "mlp":
        return HATMaskMLP(12, (16,), 8, num_tasks=NUM_TASKS), (12,)
    return HATMaskResNet18(3, num_tasks=NUM_TASKS, base_width=4), (3, 8, 8)


def make_algorithm(backbone, optimizer) -> HAT:
    # c = 0 keeps the masks from collapsing in so short a run, so tasks really share units
    return HAT(
        backbone, HeadsTIL(backbone.output_dim), optimizer, num_tasks=NUM_TASKS, mask_sparsity_reg_factor=0.0
    )


def snapshot(module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


@pytest.mark.parametrize(
    "kind, optimizer",
    [
        ("mlp", functools.partial(torch.optim.Adam, lr=0.05)),
        ("mlp", functools.partial(torch.optim.SGD, lr=0.5, momentum=0.9)),
        ("resnet", functools.partial(torch.optim.Adam, lr=0.05)),
    ],
    ids=["mlp-adam", "mlp-sgd-momentum", "resnet-bn-adam"],
)
def test_earlier_tasks_test_outputs_never_change(kind, optimizer, tmp_path):
    torch.manual_seed(0)
    backbone, input_shape = make_backbone(kind)
    algorithm = make_algorithm(backbone, optimizer)
    data = {t: task_data(t, input_shape) for t in range(NUM_TASKS)}
    test_inputs = {t: torch.cat([x for x, _, _ in data[t]]) for t in range(NUM_TASKS)}
    logits_after_own_task: dict[int, torch.Tensor] = {}
    accuracy_after_own_task: dict[int, float] = {}
    plots = HATMaskPlots(every_task=True)  # one figure per task, checked below

    for t in range(NUM_TASKS):
        algorithm.setup_task(t, 2)
        shared_before = snapshot(torch.nn.ModuleList(backbone.masked_layers.values()))
        trainer = make_trainer(tmp_path)
        trainer.fit(algorithm, train_dataloaders=Batches(data[t]), val_dataloaders=Batches(data[t][:1]))
        trainer.test(algorithm, dataloaders=[Batches(data[j]) for j in range(t + 1)], verbose=False)
        accuracies = algorithm.last_test_accuracy
        record = algorithm.on_task_end(t)
        plots.on_task_end(trainer, algorithm, t, None)

        shared_after = snapshot(torch.nn.ModuleList(backbone.masked_layers.values()))
        assert any(not torch.equal(shared_before[k], shared_after[k]) for k in shared_before), (
            "nothing trained"
        )

        was_training = algorithm.training
        algorithm.eval()
        with torch.no_grad():
            for j in range(t + 1):
                logits = algorithm.eval_logits(test_inputs[j], j)
                if j < t:
                    assert torch.equal(logits, logits_after_own_task[j]), (
                        f"task {j + 1} changed after training task {t + 1}"
                    )
                    assert accuracies[j].item() == accuracy_after_own_task[j]
                else:
                    logits_after_own_task[j] = logits
                    accuracy_after_own_task[j] = accuracies[j].item()
        algorithm.train(was_training)

        if t > 0:
            # the test is only meaningful if the new task reuses units of the earlier ones
            overlap = sum(
                (backbone.test_mask(t)[n] * backbone.previous_cumulative_mask(t)[n]).sum()
                for n in backbone.gates
            )
            assert overlap > 0
        assert 0.0 < record["capacity"] < 1.0

    # checkpoint / resume: a freshly built model loaded from the state dict gives the same outputs
    fresh_backbone, _ = make_backbone(kind)
    fresh = make_algorithm(fresh_backbone, optimizer)
    fresh.load_state_dict(algorithm.state_dict())
    fresh.eval()
    with torch.no_grad():
        for j in range(NUM_TASKS):
            assert torch.equal(fresh.eval_logits(test_inputs[j], j), logits_after_own_task[j])

    folder = tmp_path / "plots" / "hat_masks"
    assert sorted(p.name for p in folder.iterdir()) == ["capacity.png"] + [
        f"masks_after_task_{t + 1}.png" for t in range(NUM_TASKS)
    ]
