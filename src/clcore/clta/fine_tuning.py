"""Fine-tuning one task, standard or linearised, into a task vector.

Ilharco et al., ICLR 2023, App. B (and their reference code): AdamW (lr 1e-5, weight decay 0.1),
batch 128, cosine learning-rate schedule after a linear warm-up, gradient-norm clipping at 1, the
classification head frozen. Ortiz-Jimenez et al., NeurIPS 2023, Sec. 5: the same recipe on the
linearised model f(x; theta_0) + J (theta - theta_0) ("linear" mode), whose parameter delta is a
linear task vector.

The loop is the reference's plain PyTorch loop, not a Lightning module: it fine-tunes one encoder
on one task outside any continual sequence (no task loop, heads, benchmark, checkpoints or
callbacks for a Trainer to drive). A Trainer would change nothing that is measured and would put
its own seeding, device and loader handling between the recipe and the numbers. The parts it has
in common with the library come from the library: the schedule
(``clcore.utils.lr_schedules.warmup_cosine``, assigned to the optimiser each step as the
reference's ``cosine_lr`` does), ``LinearizedModel`` and the task vectors.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from clcore.task_arithmetic import LinearizedModel, LinearTaskVector, TaskVector
from clcore.utils.lr_schedules import warmup_cosine

FINETUNING_MODES = ("standard", "linear")


@dataclass
class FinetuneSettings:
    """One task's fine-tuning recipe; ``steps`` is resolved from epochs by the protocol."""

    steps: int
    batch_size: int = 128
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 500
    max_grad_norm: float | None = 1.0
    num_workers: int = 0
    seed: int = 0


def _batches_forever(loader: DataLoader):
    while True:
        yield from loader


def finetune(
    pretrained_encoder: nn.Module,
    head: nn.Module,
    train_data: Dataset,
    mode: str,
    settings: FinetuneSettings,
    device: torch.device,
) -> tuple[TaskVector, list[float]]:
    """Fine-tune a copy of ``pretrained_encoder`` (theta_0) under the frozen ``head``; returns (tau, losses).

    ``mode="standard"`` trains the network itself and returns theta_ft - theta_0 as a ``TaskVector``;
    ``mode="linear"`` trains ``LinearizedModel(encoder)`` and returns a ``LinearTaskVector``.
    The vector is on the CPU. ``pretrained_encoder`` is not modified.
    """
    if mode not in FINETUNING_MODES:
        raise ValueError(f"fine-tuning mode must be one of {FINETUNING_MODES}, got {mode!r}")
    if settings.steps < 1:
        raise ValueError(f"fine-tuning needs at least one step, got {settings.steps}")
    torch.manual_seed(settings.seed)
    encoder = copy.deepcopy(pretrained_encoder).to(device).requires_grad_(True)
    model = LinearizedModel(encoder) if mode == "linear" else encoder
    model.train()
    head = head.to(device).eval().requires_grad_(False)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    loader = DataLoader(
        train_data,
        batch_size=settings.batch_size,
        shuffle=True,
        drop_last=len(train_data) > settings.batch_size,
        num_workers=settings.num_workers,
        generator=torch.Generator().manual_seed(settings.seed),
        pin_memory=device.type == "cuda",
    )
    losses = []
    for step, (images, labels) in zip(range(settings.steps), _batches_forever(loader)):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, settings.steps, settings.warmup_steps, base_lr=settings.lr)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = F.cross_entropy(head(model(images)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        if mode == "linear":
            vector = LinearTaskVector.from_linearized(model)
        else:
            vector = TaskVector.from_models(pretrained_encoder.to(device), model)
    return vector.to("cpu"), losses
