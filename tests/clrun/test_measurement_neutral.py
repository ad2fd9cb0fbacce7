"""Measuring must not change the experiment: every optional evaluation, callback and logger leaves
the accuracy matrix R bit-identical to the run without it (same seed).

An extra test pass, a plot or a logger can draw from the global random generators (a data
loader's base seed, a head initialised for an untrained copy, a sample of images to explain); the
next task would then start from other random numbers and train differently.
"""

from __future__ import annotations

import sys

import pytest
import torch

from clcore.clrun.task_loop import run_sequence

pytestmark = pytest.mark.slow
# Dropout draws from the global generator every step: any extra draw shows in R.
RUN = ["benchmark.num_tasks=3", "trainer.max_epochs=1", "backbone.dropout=0.2"]


@pytest.fixture(scope="module")
def bare_matrix(tmp_path_factory) -> torch.Tensor:
    from tests.conftest import QUIET, compose_config

    torch.set_num_threads(1)
    cfg = compose_config([*QUIET, *RUN], tmp_path_factory.mktemp("bare") / "run")
    return run_sequence(cfg).acc_matrix.clone()


@pytest.mark.parametrize(
    "measurement",
    [
        ["eval.zero_shot=true"],
        ["callbacks=default"],
        ["callbacks=default", "plots=true"],
        ["callbacks=default", "trainer.enable_progress_bar=true"],
        ["callbacks=attributions", "callbacks.attributions.num_images=2"],
        ["logger=csv"],
        ["logger=tensorboard"],
        ["logger=many"],
        ["eval.zero_shot=true", "callbacks=default", "logger=many", "plots=true"],
    ],
    ids=lambda overrides: " ".join(overrides),
)
def test_an_optional_measurement_leaves_the_accuracy_matrix_bit_identical(
    bare_matrix, make_config, monkeypatch, measurement
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    results = run_sequence(make_config(*RUN, *measurement))
    _finish_wandb()
    # exactly equal; the cells of tasks not yet seen are NaN in both
    torch.testing.assert_close(results.acc_matrix, bare_matrix, rtol=0, atol=0, equal_nan=True)


def _finish_wandb() -> None:
    """What clrun's JobOutcome hook does after a job: the next run starts its own wandb run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
