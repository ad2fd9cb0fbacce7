"""The image-classification tasks of the task-arithmetic papers, read from local folders.

Ilharco et al., ICLR 2023, Sec. 3 / App. B, and Ortiz-Jimenez et al., NeurIPS 2023, Sec. 6: eight
tasks (Cars, DTD, EuroSAT, GTSRB, MNIST, RESISC45, SUN397, SVHN), ImageNet as the control of task
negation. Each ``ta/dataset/<name>.yaml`` names a torchvision data set class (or ``ImageFolder``),
the folder it reads, the files that must be there, the class names and prompt templates.
``missing()`` lists absent files before anything loads, so a run stops with the full list before
any model is built or trained.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from clcore.benchmarks.errors import DamagedDataError
from clcore.clta.task_data import TaskData, TransformedSubset, labels_of, split_off

CLASSNAMES_FROM_DATASET = "from_dataset"


@dataclass
class Preprocess:
    """Image transforms a model needs: ``train`` for fine-tuning batches, ``eval`` for everything else."""

    train: Callable
    eval: Callable


def _import_object(dotted_path: str) -> Any:
    module_name, _, attribute = dotted_path.rpartition(".")
    if not module_name:
        raise ValueError(f"expected a dotted path module.attribute, got {dotted_path!r}")
    return getattr(importlib.import_module(module_name), attribute)


def readable_classname(folder_name: str) -> str:
    """A folder or metadata class name as words: ``apartment_building/outdoor`` -> ``apartment building outdoor``."""
    return " ".join(folder_name.replace("_", " ").replace("/", " ").split())


class VisionTaskSource:
    """One data set on disk, as a ``TaskData`` with train / val / test splits.

    - ``dataset_class``: dotted path of a torchvision data set class, built as
      ``dataset_class(root=root, transform=None, **train_kwargs)`` (and ``test_kwargs``).
    - ``train_kwargs`` null: an evaluation-only data set (a negation control): its one split is
      divided into validation and test. ``test_kwargs`` null: no official test split, so
      ``test_fraction`` of the training split is held out (seeded).
    - The validation set is ``val_fraction`` of the training split, at most ``max_val_samples``.
    - ``classnames``: a list, ``from_dataset`` (the data set's own ``classes``, made readable), or a
      dotted path to a list (``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES``).
    - ``required``: paths relative to ``root`` that must exist; ``how_to_get`` says where they come from.
    """

    def __init__(
        self,
        name: str,
        dataset_class: str,
        root: str,
        required: Sequence[str],
        templates: Sequence[str],
        classnames: Sequence[str] | str = CLASSNAMES_FROM_DATASET,
        train_kwargs: Mapping[str, Any] | None = None,
        test_kwargs: Mapping[str, Any] | None = None,
        test_fraction: float | None = None,
        val_fraction: float = 0.1,
        max_val_samples: int | None = 5000,
        split_seed: int = 0,
        finetune_epochs: float = 1.0,
        how_to_get: str = "",
    ) -> None:
        if train_kwargs is None and test_kwargs is None:
            raise ValueError(f"{name}: set train_kwargs, test_kwargs or both")
        if train_kwargs is not None and test_kwargs is None and test_fraction is None:
            raise ValueError(f"{name}: no test split (test_kwargs) and no test_fraction to hold one out")
        if not templates:
            raise ValueError(f"{name}: at least one prompt template is needed")
        self.name = name
        self.dataset_class = dataset_class
        self.root = Path(root).expanduser()
        self.required = list(required)
        self.templates = list(templates) if not isinstance(templates, str) else _import_object(templates)
        self.classnames = classnames
        self.train_kwargs = dict(train_kwargs) if train_kwargs is not None else None
        self.test_kwargs = dict(test_kwargs) if test_kwargs is not None else None
        self.test_fraction = test_fraction
        self.val_fraction = val_fraction
        self.max_val_samples = max_val_samples
        self.split_seed = split_seed
        self.finetune_epochs = finetune_epochs
        self.how_to_get = how_to_get

    def missing(self) -> list[str]:
        """Each required path that is absent, as an absolute path."""
        return [
            str((self.root / relative).resolve())
            for relative in self.required
            if not (self.root / relative).exists()
        ]

    def missing_message(self) -> str:
        """The missing paths and where the data come from, or "" when nothing is missing."""
        absent = self.missing()
        if not absent:
            return ""
        lines = [f"{self.name}: missing under {self.root.resolve()}:"]
        lines += [f"    {path}" for path in absent]
        if self.how_to_get:
            lines.append(f"    ({self.how_to_get})")
        return "\n".join(lines)

    def _open(self, kwargs: Mapping[str, Any]) -> Dataset:
        """The torchvision data set over files known to be present (``missing`` is checked first):
        if torchvision cannot read them, they are damaged, and the message says which and what to do."""
        dataset_class = _import_object(self.dataset_class)
        try:
            return dataset_class(root=str(self.root), transform=None, **kwargs)
        except Exception as error:
            files = ", ".join(str((self.root / relative).resolve()) for relative in self.required)
            cause = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise DamagedDataError(
                files,
                f"{self.name}: the files are present but {dataset_class.__name__} cannot read them "
                f"({type(error).__name__}{': ' + cause if cause else ''}); they are truncated or not the official files",
                fix=f"delete them and fetch them again{' (' + self.how_to_get + ')' if self.how_to_get else ''}",
            ) from error

    def _resolve_classnames(self, dataset: Dataset) -> list[str]:
        if isinstance(self.classnames, str) and self.classnames != CLASSNAMES_FROM_DATASET:
            return list(_import_object(self.classnames))
        if isinstance(self.classnames, str):
            if not hasattr(dataset, "classes"):
                raise ValueError(
                    f"{self.name}: classnames: {CLASSNAMES_FROM_DATASET}, but the data set has no .classes"
                )
            names = [name[0] if isinstance(name, tuple) else name for name in dataset.classes]
            return [readable_classname(str(name)) for name in names]
        return list(self.classnames)

    def build(self, preprocess: Preprocess | None) -> list[TaskData]:
        """Open the data set (``missing()`` should be empty) and split it; ``preprocess`` turns its images into tensors."""
        if preprocess is None:
            raise ValueError(f"{self.name}: images on disk need the model's preprocessing (Preprocess)")
        train_full = self._open(self.train_kwargs) if self.train_kwargs is not None else None
        test_full = self._open(self.test_kwargs) if self.test_kwargs is not None else None
        reference = train_full if train_full is not None else test_full
        classnames = self._resolve_classnames(reference)
        if hasattr(reference, "classes") and len(reference.classes) != len(classnames):
            raise ValueError(
                f"{self.name}: {len(classnames)} class names configured but the data set has "
                f"{len(reference.classes)} classes"
            )

        if train_full is None:  # evaluation only: validation and test both come from the one split
            test_positions, val_positions = split_off(
                len(test_full), self.val_fraction, self.max_val_samples, self.split_seed
            )
            train_split, val_split, test_split = None, (test_full, val_positions), (test_full, test_positions)
        else:
            pool = torch.arange(len(train_full))
            if test_full is None:
                kept, held_out = split_off(len(pool), self.test_fraction, None, self.split_seed)
                test_split, pool = (train_full, pool[held_out]), pool[kept]
            else:
                test_split = (test_full, torch.arange(len(test_full)))
            kept, held_out = split_off(
                len(pool), self.val_fraction, self.max_val_samples, self.split_seed + 1
            )
            train_split, val_split = (train_full, pool[kept]), (train_full, pool[held_out])

        def view(split: tuple[Dataset, Tensor] | None, transform: Callable) -> Dataset | None:
            return None if split is None else TransformedSubset(split[0], split[1].tolist(), transform)

        return [
            TaskData(
                name=self.name,
                classnames=classnames,
                templates=self.templates,
                train=view(train_split, preprocess.train),
                val=view(val_split, preprocess.eval),
                test=view(test_split, preprocess.eval),
                val_labels=labels_of(val_split[0])[val_split[1]],
                finetune_epochs=self.finetune_epochs,
                description={
                    "source": self.dataset_class,
                    "root": str(self.root),
                    "sizes": {
                        "train": 0 if train_split is None else len(train_split[1]),
                        "val": len(val_split[1]),
                        "test": len(test_split[1]),
                    },
                },
            )
        ]
