"""One task of the protocol: its class names, prompt templates and train / validation / test data.

Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, App. B: the validation set is
held out from the training split (10%, at most 5000 images, seeded) and used only to pick
hyper-parameters such as the scaling coefficient; fine-tuning uses the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import Dataset


@dataclass
class TaskData:
    """A classification task: ``train`` / ``val`` / ``test`` yield ``(image, label)`` with labels in 0..C-1.

    ``train`` is None for an evaluation-only task (the control of task negation).
    ``classnames`` and ``templates`` build a CLIP zero-shot head; ``finetune_epochs`` is the task's
    own fine-tuning length (Ilharco et al. use one per data set); ``val_labels`` lets the
    protocol draw class-balanced few-shot subsets without reading images.
    """

    name: str
    classnames: list[str]
    templates: list[str]
    train: Dataset | None
    val: Dataset
    test: Dataset
    val_labels: Tensor
    finetune_epochs: float = 1.0
    description: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


class TransformedSubset(Dataset):
    """``dataset[indices[i]]`` with ``transform`` applied to the image: one data set, several views.

    The training split gets the training transform while the validation images carved from the
    same files get the evaluation transform.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform: Callable | None = None) -> None:
        self.dataset = dataset
        self.indices = [int(index) for index in indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        image, label = self.dataset[self.indices[position]]
        return (self.transform(image) if self.transform is not None else image), label


def split_off(num_samples: int, fraction: float, max_samples: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded random split of ``range(num_samples)`` into (kept, held_out).

    ``held_out`` has ``int(num_samples * fraction)`` indices, capped at ``max_samples`` (the
    reference code's rule); both parts must be non-empty.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    held_out_size = int(num_samples * fraction)
    if max_samples is not None:
        held_out_size = min(held_out_size, int(max_samples))
    if held_out_size < 1 or held_out_size >= num_samples:
        raise ValueError(f"cannot hold out {fraction} of {num_samples} samples: one part would be empty")
    order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
    return order[held_out_size:].sort().values, order[:held_out_size].sort().values


def few_shot_indices(labels: Tensor, shots_per_class: int, seed: int) -> Tensor:
    """Up to ``shots_per_class`` seeded random positions per class of ``labels`` (k-shot, aTLAS Sec. 4)."""
    if shots_per_class < 1:
        raise ValueError(f"shots_per_class must be >= 1, got {shots_per_class}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in labels.unique().tolist():
        positions = (labels == label).nonzero().flatten()
        chosen.append(positions[torch.randperm(len(positions), generator=generator)[:shots_per_class]])
    return torch.cat(chosen).sort().values


def labels_of(dataset: Dataset) -> Tensor:
    """The labels of a torchvision data set, read from its index rather than by loading images.

    torchvision keeps them under different names (``targets``, ``_labels``, ``labels``, or
    ``(path, label)`` pairs in ``_samples`` / ``samples``); anything else is iterated.
    """
    if isinstance(dataset, TransformedSubset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    for attribute in ("targets", "_labels", "labels"):
        if hasattr(dataset, attribute):
            labels = getattr(dataset, attribute)
            return (
                labels.long().clone() if isinstance(labels, Tensor) else torch.as_tensor(list(labels)).long()
            )
    for attribute in ("_samples", "samples"):
        if hasattr(dataset, attribute):
            return torch.as_tensor([label for _, label in getattr(dataset, attribute)], dtype=torch.long)
    return torch.as_tensor([int(dataset[index][1]) for index in range(len(dataset))], dtype=torch.long)
