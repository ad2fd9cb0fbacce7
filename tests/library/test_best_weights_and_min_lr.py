"""The HAT reference code's per-task training rules as reusable callbacks: the weights of the best
validation epoch restored at the task's end, and a task stopped once its decaying rate is below a floor."""

from __future__ import annotations

import pytest
import torch
from lightning import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clcore.callbacks import RestoreBestWeights, StopBelowLearningRate
from clcore.clrun.task_loop import run_sequence


class ScriptedValidation(LightningModule):
    """A linear model trained by SGD whose logged ``val/loss`` follows a script, one value per epoch."""

    def __init__(self, val_losses: list[float], lr: float = 0.1, gamma: float | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.val_losses, self.lr, self.gamma = val_losses, lr, gamma
        self.batches_trained = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.batches_trained += 1
        return nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.val_losses[self.current_epoch])

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)
        if self.gamma is None:
            return optimizer
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=self.gamma)]


class RecordWeights(Callback):
    def __init__(self) -> None:
        self.states = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.states.append({k: v.clone() for k, v in pl_module.state_dict().items()})


def _fit(model: LightningModule, callbacks: list, max_epochs: int) -> Trainer:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 3), torch.randn(16, 1))
    trainer = Trainer(
        max_epochs=max_epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, DataLoader(data, batch_size=4), DataLoader(data, batch_size=16))
    return trainer


@pytest.mark.parametrize(
    ("mode", "losses", "best"),
    [
        ("min", [0.9, 0.5, 0.7, 0.5, 0.8], 1),
        ("max", [0.1, 0.3, 0.2, 0.3, 0.25], 1),
        ("min", [3.0, 2.0, 1.0], 2),
    ],
)
def test_the_task_ends_with_the_weights_of_its_first_best_validation_epoch(mode, losses, best):
    """Ties keep the earlier epoch (the reference's strict `valid_loss < best_loss`)."""
    model, record = ScriptedValidation(losses), RecordWeights()
    _fit(model, [RestoreBestWeights("val/loss", mode), record], max_epochs=len(losses))
    assert len(record.states) == len(losses)
    if best < len(losses) - 1:  # training went on after the best epoch: restoring is visible
        assert not torch.equal(record.states[best]["layer.weight"], record.states[-1]["layer.weight"])
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, record.states[best][name]), name


def test_a_metric_the_algorithm_does_not_log_is_named():
    with pytest.raises(KeyError, match="val/acc"):
        _fit(ScriptedValidation([1.0]), [RestoreBestWeights("val/acc", "max")], max_epochs=1)


def test_training_stops_at_the_first_epoch_whose_rate_is_below_the_floor():
    """lr 1, x0.1 after every epoch: epochs 0-2 train at 1, 0.1, 0.01; epoch 3 would train at 0.001 < 0.005."""
    model, stop = ScriptedValidation([1.0] * 10, lr=1.0, gamma=0.1), StopBelowLearningRate(min_lr=0.005)
    _fit(model, [stop], max_epochs=10)
    assert stop.stopped_at_epoch == 3
    assert model.batches_trained == 3 * 4  # 4 batches an epoch, no batch at the stopped epoch


def test_a_rate_that_never_falls_below_the_floor_trains_every_epoch():
    model, stop = ScriptedValidation([1.0] * 4, lr=1.0), StopBelowLearningRate(min_lr=1e-4)
    _fit(model, [stop], max_epochs=4)
    assert stop.stopped_at_epoch is None and model.batches_trained == 4 * 4


@pytest.mark.slow
def test_hat_pmnist_paper_runs_with_the_reference_rules_and_keeps_hat_forget_free(make_config):
    """The paper experiment on 8x8 digits (tiny widths): dropout 0.2 / 0.5, the plateau schedule,
    best weights restored and the rate floor; restoring a task's best epoch never touches earlier
    tasks' weights, so BWT stays exactly 0."""
    from clcore.clrun.construction import build

    overrides = [
        "experiment=hat_pmnist_paper",
        "benchmark=permuted_digits",
        "benchmark.num_tasks=3",
        "backbone.hidden_dims=[100]",
        "backbone.output_dim=100",
        "trainer.max_epochs=15",  # SGD without momentum under dropout 0.5 learns slowly
        "callbacks.hat_masks=null",
    ]
    cfg = make_config(*overrides)
    _, algorithm = build(cfg)
    assert algorithm.backbone.input_dropout.p == 0.2 and algorithm.backbone.dropout.p == 0.5
    targets = {c._target_ for c in cfg.callbacks.values() if c is not None}
    assert {"clcore.callbacks.RestoreBestWeights", "clcore.callbacks.StopBelowLearningRate"} <= targets
    assert cfg.lr_scheduler.patience == 4 and cfg.optimizer.momentum == 0.0
    summary = run_sequence(cfg).summary()
    assert summary["bwt"] == 0.0 and summary["average_accuracy"] > 0.6
