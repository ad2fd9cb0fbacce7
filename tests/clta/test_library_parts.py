"""What ``clta`` takes from the library instead of repeating it: the warm-up + cosine schedule, the
top-1 count, the rotation; and ``clta --help`` loading no torch. (That no library module imports
``clta`` is ``tests/test_layout.py``'s.)

The "previous" expressions below are the code ``clta`` and ``RotatedBenchmark`` ran before they
shared these parts; every recorded result was produced by it, so the shared parts must give its
numbers bit for bit.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import TensorDataset
from torchvision.transforms.v2 import functional as TF

from clcore.benchmarks import RotatedBenchmark
from clcore.benchmarks.rotated import rotate
from clcore.benchmarks.sources import load_source
from clcore.clta.evaluation import accuracy
from clcore.clta.fine_tuning import FinetuneSettings, finetune
from clcore.clta.rotated_tasks import normalised_images
from clcore.utils.lr_schedules import lr_multiplier, warmup_cosine

# (total steps, warm-up steps, base lr): the configs' values and ones whose roundings differ
SCHEDULES = [(281, 20, 1e-3), (40, 2, 3e-3), (700, 500, 1e-5), (50, 7, 0.1), (30, 0, 1e-3)]


def reference_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Ilharco et al.'s ``cosine_lr`` (task_vectors, src/utils.py), with ``math`` for ``np``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    e, es = step - warmup_steps, total_steps - warmup_steps
    return 0.5 * (1 + math.cos(math.pi * e / es)) * base_lr


def previous_clta_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """``clta``'s own ``cosine_lr`` before it used the library's schedule."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress)) * base_lr


# -- one schedule ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("total", "warmup", "base_lr"), SCHEDULES)
def test_warmup_cosine_is_the_reference_schedule(total, warmup, base_lr):
    for step in range(total):
        lr = warmup_cosine(step, total, warmup, base_lr=base_lr)
        assert lr == previous_clta_lr(step, base_lr, warmup, total), step
        if step < warmup:  # the reference's own rounding
            assert lr == reference_lr(step, total, warmup, base_lr), step
        else:  # pi * (e / es) against pi * e / es: a last-bit difference in the angle
            assert lr == pytest.approx(
                reference_lr(step, total, warmup, base_lr), rel=1e-15, abs=1e-14 * base_lr
            )
    assert warmup_cosine(warmup, total, warmup, base_lr) == base_lr  # the peak, right after the warm-up
    assert warmup_cosine(total, total, warmup, base_lr) == 0.0  # held at the end, not rising again


@pytest.mark.parametrize(("total", "warmup", "base_lr"), SCHEDULES)
def test_tak_multiplier_is_the_same_schedule_as_a_factor(total, warmup, base_lr):
    multiplier = lr_multiplier("cosine", total, warmup)
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=base_lr)
    scheduler = LambdaLR(optimizer, multiplier)
    for step in range(total):
        assert multiplier(step) == warmup_cosine(step, total, warmup), step
        # LambdaLR rounds base_lr * factor: equal to the rate clta sets up to the last bit
        assert optimizer.param_groups[0]["lr"] == base_lr * multiplier(step)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(
            warmup_cosine(step, total, warmup, base_lr), rel=1e-15
        )
        optimizer.step()
        scheduler.step()


def test_finetuning_sets_the_reference_rate_at_every_step(monkeypatch):
    steps, warmup, lr = 12, 4, 2e-3
    seen = []
    adamw_step = torch.optim.AdamW.step

    def recording_step(optimizer, *args, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return adamw_step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    data = TensorDataset(torch.randn(20, 3), torch.randint(0, 2, (20,)))
    settings = FinetuneSettings(steps=steps, batch_size=8, lr=lr, warmup_steps=warmup)
    finetune(nn.Linear(3, 4), nn.Linear(4, 2), data, "standard", settings, torch.device("cpu"))
    assert seen == [previous_clta_lr(step, lr, warmup, steps) for step in range(steps)]
    assert seen[:warmup] == [reference_lr(step, steps, warmup, lr) for step in range(warmup)]


# -- one accuracy ---------------------------------------------------------------------------------
def test_clta_accuracy_is_the_hand_count_bit_for_bit():
    torch.manual_seed(0)
    images, labels = torch.randn(103, 5), torch.randint(0, 3, (103,))
    encoder, head = nn.Linear(5, 4), nn.Linear(4, 3)
    with torch.no_grad():
        correct = int((head(encoder(images)).argmax(dim=1) == labels).sum())
    assert 0 < correct < 103
    for batch_size in (1, 10, 256):  # the batching does not change the fraction
        measured = accuracy(encoder, head, TensorDataset(images, labels), torch.device("cpu"), batch_size)
        assert measured == correct / 103
    with pytest.raises(ValueError, match="empty data set"):
        accuracy(encoder, head, TensorDataset(images[:0], labels[:0]), torch.device("cpu"))


# -- one rotation ---------------------------------------------------------------------------------
def test_rotate_turns_the_image_and_fills_the_corners_with_background():
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 0, 2] = 1.0  # top centre
    turned = rotate(image, 90.0)
    # counter-clockwise: the top centre goes to the left centre
    assert turned.argmax() == 2 * 5 + 0 and turned[0, 0, 2, 0] == pytest.approx(1.0, abs=1e-5)
    corners = rotate(torch.ones(1, 1, 9, 9), 45.0)[0, 0]
    assert corners[0, 0] == corners[0, -1] == corners[-1, 0] == corners[-1, -1] == 0.0
    assert corners[4, 4] == pytest.approx(1.0)


@pytest.mark.parametrize("angle", [30.0, 90.0, -45.0, 180.0])
def test_both_users_rotate_exactly_as_before(angle):
    pixels = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    previous = TF.rotate(pixels, angle, interpolation=TF.InterpolationMode.BILINEAR)
    assert torch.equal(rotate(pixels, angle), previous)

    # clta: uint8 -> [0, 1], rotate, then normalise with the base data's statistics
    data = load_source("digits")
    uint8 = data.test_images[:6]
    mean, std = torch.tensor(data.mean).view(1, -1, 1, 1), torch.tensor(data.std).view(1, -1, 1, 1)
    rotated = TF.rotate(uint8.float() / 255.0, angle, interpolation=TF.InterpolationMode.BILINEAR)
    assert torch.equal(normalised_images(uint8, data, angle), (rotated - mean) / std)

    # RotatedBenchmark: normalised batch -> [0, 1], rotate, normalise again
    benchmark = RotatedBenchmark("digits", num_tasks=2, angles=[0.0, angle])
    benchmark.load()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    mean, std = benchmark._mean, benchmark._std
    rotated = TF.rotate(x * std + mean, angle, interpolation=TF.InterpolationMode.BILINEAR)
    assert torch.equal(benchmark.task_transform(x, 1), (rotated - mean) / std)


# -- the entry point ------------------------------------------------------------------------------
def test_clta_entry_point_loads_no_torch():
    """``clta --help`` imports ``clcore.clta.cli``; the package's exports load only when used."""
    probe = "import sys, clcore.clta.cli; print(sorted({'torch', 'lightning'} & set(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert loaded.stdout.strip() == "[]"
