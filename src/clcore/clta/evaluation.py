"""Accuracy of an edited encoder, theta_0 + alpha * tau, in each of the three fine-tuning modes.

Ortiz-Jimenez et al., NeurIPS 2023, Sec. 5-6 compare three ways to use task vectors:

- ``standard``: non-linear fine-tuning, evaluated on the network f(x; theta_0 + alpha tau);
- ``linear``:   linearised fine-tuning, evaluated on f_lin(x; theta_0 + alpha tau_lin);
- ``posthoc``:  non-linear fine-tuning, evaluated on the linearised model
  (``tau.to_linear()`` applied to ``LinearizedModel(theta_0)``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from clcore.metrics.task_accuracy import top1_accuracy
from clcore.task_arithmetic import LinearizedModel, TaskVector

EVALUATION_MODES = ("standard", "linear", "posthoc")
TRAINED_AS = {
    "standard": "standard",
    "linear": "linear",
    "posthoc": "standard",
}  # whose task vectors a mode uses


@torch.no_grad()
def accuracy(
    encoder: nn.Module,
    head: nn.Module,
    data: Dataset,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
) -> float:
    """Top-1 accuracy of ``head(encoder(x))`` on ``data`` (a fraction in [0, 1]), counted by the library's metric."""
    if len(data) == 0:
        raise ValueError("cannot measure accuracy on an empty data set")
    encoder.eval()
    head.eval()
    loader = DataLoader(
        data, batch_size=batch_size, num_workers=num_workers, pin_memory=device.type == "cuda"
    )

    def logits_and_labels():
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            yield head(encoder(images)), labels

    return top1_accuracy(logits_and_labels())


class EncoderEditor:
    """theta_0 + alpha * tau for one evaluation mode, written into one working copy of the encoder.

    Each ``at(...)`` first restores theta_0 and then applies the vector in place, so a sweep over
    alphas and methods never accumulates edits and never copies the model per evaluation.
    """

    def __init__(self, pretrained_encoder: nn.Module, mode: str) -> None:
        if mode not in EVALUATION_MODES:
            raise ValueError(f"evaluation mode must be one of {EVALUATION_MODES}, got {mode!r}")
        self.mode = mode
        working = copy.deepcopy(pretrained_encoder).requires_grad_(False)
        self.working = LinearizedModel(working) if mode != "standard" else working
        self.pretrained_state = {name: value.clone() for name, value in self.working.state_dict().items()}

    def base(self) -> nn.Module:
        """A fresh copy of the mode's pre-trained model (the network or its linearisation): aTLAS composes on it."""
        base = copy.deepcopy(self.working)
        base.load_state_dict(self.pretrained_state)
        return base

    def cast(self, task_vector: TaskVector) -> TaskVector:
        """The vector as this mode applies it (post-hoc: a standard vector used as a linear one)."""
        return task_vector.to_linear() if self.mode == "posthoc" else task_vector

    @property
    def device(self) -> torch.device:
        return next(iter(self.pretrained_state.values())).device

    @torch.no_grad()
    def at(self, task_vector: TaskVector | None, alpha: float = 1.0) -> nn.Module:
        """The working encoder set to theta_0 + alpha * task_vector (theta_0 itself for None)."""
        self.working.load_state_dict(self.pretrained_state)
        if task_vector is not None:
            vector = self.cast(task_vector).to(self.device)  # no copy when cast and moved already
            vector.apply_to(self.working, scaling_coef=float(alpha), inplace=True)
        return self.working
