"""WSN (Kang et al. 2022): the top-c subnetwork, the straight-through gradient, the frozen weights of
earlier tasks (Eq. 4), and the guarantee that earlier tasks' test outputs never change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clcore.algorithms.wsn import WSN, straight_through_mask, subnetwork_mask
from clcore.backbones.mlp import MLP
from clcore.clrun.checks import preflight
from clcore.clrun.task_loop import run_sequence
from clcore.config_rules import ConfigError
from clcore.heads.til import HeadsTIL
from tests.helpers import FailInTask
from tests.library.test_packnet import INVARIANT_SETTINGS, OutputRecorder, assert_earlier_tasks_unchanged

CLRUN = str(Path(sys.executable).with_name("clrun"))
SCORES = torch.tensor([[0.3, -0.9, 0.1, 0.5], [-0.2, 0.05, -0.6, 0.4]])


# ---- the equations --------------------------------------------------------------------------------
def test_top_c_mask_by_hand():
    # |s| = 0.3 0.9 0.1 0.5 / 0.2 0.05 0.6 0.4: the four largest are 0.9, 0.6, 0.5, 0.4
    expected = torch.tensor([[False, True, False, True], [False, False, True, True]])
    assert torch.equal(subnetwork_mask(SCORES, 0.5), expected)
    # c = 0.3: round(2.4) = 2 entries, 0.9 and 0.6
    assert torch.equal(subnetwork_mask(SCORES, 0.3), torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0]]).bool())
    # a tiny c keeps at least one weight per layer; c = 1 keeps all
    assert torch.equal(subnetwork_mask(SCORES, 0.01), torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]]).bool())
    assert bool(subnetwork_mask(SCORES, 1.0).all())


def test_straight_through_gradient_reaches_every_score():
    weight = torch.tensor([[1.0, 2.0, -3.0, 0.5], [-1.5, 4.0, 2.5, -0.25]])
    upstream = torch.tensor([[0.1, -0.2, 0.3, 0.4], [0.5, 0.6, -0.7, 0.8]])
    scores = SCORES.clone().requires_grad_(True)
    mask = straight_through_mask(scores, 0.5)
    masked = weight * mask
    assert torch.equal(masked, torch.where(subnetwork_mask(SCORES, 0.5), weight, 0.0))
    (masked * upstream).sum().backward()
    # STE: dL/dm = upstream * w passes the hard top-c unchanged, then d|s|/ds = sign(s); the scores
    # outside the subnetwork get their gradient too (that is how they can enter it)
    torch.testing.assert_close(scores.grad, upstream * weight * SCORES.sign(), rtol=0, atol=0)


def _wsn() -> WSN:
    torch.manual_seed(0)
    return WSN(MLP(6, (8,), 5), HeadsTIL(5), torch.optim.SGD, num_tasks=2, c=0.5)


def test_earlier_tasks_weights_get_no_gradient_but_are_reused():
    """Eq. 4: the weights of M_{t-1} are frozen; the new subnetwork may select them (their scores train)."""
    algorithm = _wsn()
    algorithm.setup_task(0, 2)
    algorithm.store_mask(0)  # task 1's subnetwork, as at the end of its training
    algorithm.setup_task(1, 2)
    with torch.no_grad():  # task 2's scores moved: its subnetwork overlaps task 1's only in part
        for score in algorithm.scores.values():
            score.copy_(torch.randn_like(score))
    algorithm.on_train_start()
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(1))
    logits = algorithm.heads(algorithm.backbone_forward(x, algorithm.training_weights()), 1)
    logits.square().sum().backward()
    for name in algorithm.masked_names:
        previous = algorithm.task_masks[name][0]
        current = subnetwork_mask(algorithm.score(name), 0.5)
        reused, new = current & previous, current & ~previous
        assert bool(reused.any()) and bool(new.any())
        grad = algorithm.masked_weight(name).grad
        assert bool((grad[previous] == 0).all()), "a weight of task 1 would move"
        assert bool((grad[~current] == 0).all()), "a weight outside the subnetwork got a gradient"
        assert bool((grad[new] != 0).any())
        assert bool((algorithm.score(name).grad[reused] != 0).any())
    # biases are task 1's: fixed from task 2 on, no gradient computed
    assert all(algorithm.backbone.get_parameter(name).grad is None for name in algorithm.unmasked_names)


# ---- the guarantee: earlier tasks' test outputs never change (BWT exactly 0) ----------------------
@INVARIANT_SETTINGS
def test_earlier_tasks_test_outputs_never_change(make_config, overrides):
    outputs = OutputRecorder()
    cfg = make_config("algorithm=wsn", "benchmark.num_tasks=3", "save_checkpoints=false", *overrides)
    results = run_sequence(cfg, extra_callbacks=[outputs])
    assert_earlier_tasks_unchanged(outputs, results)
    # meaningful only because later subnetworks reuse the frozen weights of earlier ones
    assert results.extra["reused"][0] == 0.0 and min(results.extra["reused"][1:]) > 0.2
    assert results.extra["task_weights"] == [pytest.approx(0.5, abs=1e-3)] * 3
    capacity = results.extra["weights_used"]
    assert results.extra["capacity"] == [1.0 - used for used in capacity]  # free = 1 - used, as HAT's
    assert (
        capacity[0] == results.extra["task_weights"][0] and capacity == sorted(capacity) and capacity[-1] < 1
    )


# ---- checkpoint / resume ----------------------------------------------------------------------------
def test_crash_mid_task_resumes_to_the_same_results(make_config):
    """Scores and the stored masks of tasks 1-2 are in the checkpoint; a crash in task 3 resumes exactly."""
    overrides = ("algorithm=wsn", "benchmark.num_tasks=3", "trainer.limit_train_batches=8")
    reference = run_sequence(make_config(*overrides, subdir="reference"))
    cfg = make_config(*overrides, subdir="crashed")
    with pytest.raises(RuntimeError, match="simulated crash in task 3"):
        run_sequence(cfg, extra_callbacks=[FailInTask(task=3)])
    checkpoints = sorted(p.name for p in (Path(cfg.paths.output_dir) / "checkpoints").iterdir())
    assert checkpoints == ["task_1.ckpt", "task_2.ckpt"]
    resumed = run_sequence(cfg)
    torch.testing.assert_close(resumed.acc_matrix, reference.acc_matrix, rtol=0, atol=0, equal_nan=True)
    for key in ("weights_used", "capacity", "reused"):
        assert resumed.extra[key] == reference.extra[key]


# ---- the command line and its refusals ----------------------------------------------------------------
def test_refused_outside_til_with_the_reason_and_bad_options_listed(make_config):
    with pytest.raises(ConfigError) as refused:
        preflight(make_config("algorithm=wsn", "paradigm=cil", "benchmark=split_digits"))
    message = str(refused.value)
    assert "WSN does not support paradigm=cil" in message
    assert "task id at test time" in message and "paradigm=til" in message
    for c in ("0", "1.5"):
        with pytest.raises(ConfigError, match=rf"algorithm.c={c}: .* must be in \(0, 1\]"):
            preflight(make_config("algorithm=wsn", f"algorithm.c={c}"))


@pytest.mark.slow
def test_clrun_algorithm_wsn_end_to_end(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            CLRUN,
            "algorithm=wsn",
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
    assert (
        len(summary["weights_used"]) == 2
        and 0.5 <= summary["weights_used"][0] < summary["weights_used"][1] <= 1
    )
