"""CPU-sized tasks for the protocol: rotated views of a small base data set (digits or MNIST).

The small study needs what the CLIP protocol has, at a size a CPU handles in minutes: a model
pre-trained on broad data, and several downstream tasks on which it is weaker. Here the base
training split is divided once (seeded) into a *pre-training* part (upright images; see
``small_mlp.py``) and a *task* part. Task "rot<angle>" is the task part rotated by ``angle``
degrees, with its own validation split; its test set is the base test set, rotated the same way.
Rotation is done once, by the library's ``clcore.benchmarks.rotated.rotate`` (RotatedBenchmark's),
in [0, 1] pixel space so that the uncovered corners are background.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from clcore.benchmarks.rotated import rotate
from clcore.benchmarks.sources import MNIST_FILES, ImageData, load_source
from clcore.clta.task_data import TaskData, split_off


@dataclass
class BaseSplit:
    """The base data set and which of its training images pre-train the model / make the tasks."""

    data: ImageData
    pretrain_indices: Tensor
    task_indices: Tensor


def base_data_missing(source: str, root: str | None) -> list[str]:
    """Absent files of a base data set (scikit-learn's digits ship with the package: never missing)."""
    if source != "mnist":
        return []
    if root is None:
        return ["base_data.root is not set (the folder holding MNIST/raw/)"]
    raw = Path(root).expanduser() / "MNIST" / "raw"
    return [
        str((raw / name).resolve())
        for name in MNIST_FILES
        if not (raw / name).is_file() and not (raw / f"{name}.gz").is_file()
    ]


def load_base_split(source: str, root: str | None, pretrain_fraction: float, split_seed: int) -> BaseSplit:
    """Seeded division of the base training split into pre-training and task images."""
    data = load_source(source, root)
    task_indices, pretrain_indices = split_off(len(data.train_labels), pretrain_fraction, None, split_seed)
    return BaseSplit(data, pretrain_indices, task_indices)


def normalised_images(images: Tensor, data: ImageData, angle: float = 0.0) -> Tensor:
    """uint8 ``[N, C, H, W]`` -> float, rotated by ``angle`` degrees (bilinear), normalised with the base stats."""
    pixels = images.float() / 255.0
    if angle:
        pixels = rotate(pixels, angle)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return (pixels - mean) / std


class RotatedTasks:
    """One task per angle in ``angles`` over ``base_data`` (``source``, ``root``, ``pretrain_fraction``, ``split_seed``).

    Task names are ``names`` if given, else ``rot<angle>``. Labels are the digits 0..9, class
    names ``"0"``..``"9"``.
    """

    def __init__(
        self,
        base_data: Mapping,
        angles: Sequence[float],
        names: Sequence[str] | None = None,
        val_fraction: float = 0.1,
        max_val_samples: int | None = None,
        finetune_epochs: float = 1.0,
        templates: Sequence[str] = ('a photo of the number: "{}".',),
    ) -> None:
        if not angles:
            raise ValueError("RotatedTasks needs at least one angle")
        if names is not None and len(names) != len(angles):
            raise ValueError(f"{len(names)} task names for {len(angles)} angles")
        self.base_data = dict(base_data)
        self.angles = [float(angle) for angle in angles]
        self.names = list(names) if names is not None else [f"rot{angle:g}" for angle in self.angles]
        self.val_fraction = val_fraction
        self.max_val_samples = max_val_samples
        self.finetune_epochs = finetune_epochs
        self.templates = list(templates)

    def missing_message(self) -> str:
        """The base data set's missing files and how to make them, or "" when nothing is missing."""
        absent = base_data_missing(self.base_data["source"], self.base_data.get("root"))
        if not absent:
            return ""
        hint = "python scripts/mnist_from_test_set.py --src <folder with t10k-*-ubyte.gz> --dst <root>, or the official MNIST files"
        return "\n".join(
            [
                f"{', '.join(self.names)} (base data {self.base_data['source']}): missing",
                *[f"    {path}" for path in absent],
                f"    ({hint})",
            ]
        )

    def build(self, preprocess=None) -> list[TaskData]:
        """The rotated tasks (``preprocess`` is unused: the images are already tensors)."""
        split = load_base_split(
            self.base_data["source"],
            self.base_data.get("root"),
            self.base_data["pretrain_fraction"],
            self.base_data["split_seed"],
        )
        data = split.data
        kept, held_out = split_off(
            len(split.task_indices), self.val_fraction, self.max_val_samples, self.base_data["split_seed"] + 1
        )
        train_indices, val_indices = split.task_indices[kept], split.task_indices[held_out]
        classnames = [str(digit) for digit in range(data.num_classes)]
        tasks = []
        for name, angle in zip(self.names, self.angles):

            def rotated(images: Tensor, labels: Tensor, angle: float = angle) -> TensorDataset:
                return TensorDataset(normalised_images(images, data, angle), labels)

            tasks.append(
                TaskData(
                    name=name,
                    classnames=classnames,
                    templates=self.templates,
                    train=rotated(data.train_images[train_indices], data.train_labels[train_indices]),
                    val=rotated(data.train_images[val_indices], data.train_labels[val_indices]),
                    test=rotated(data.test_images, data.test_labels),
                    val_labels=data.train_labels[val_indices],
                    finetune_epochs=self.finetune_epochs,
                    description={
                        "source": data.name,
                        "rotation_degrees": angle,
                        "sizes": {
                            "train": len(train_indices),
                            "val": len(val_indices),
                            "test": len(data.test_labels),
                        },
                    },
                )
            )
        return tasks
