"""``CLBenchmark``: a LightningDataModule that knows the task sequence."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from lightning import LightningDataModule
from torch import Tensor

from clcore.benchmarks.model_input import ModelInput
from clcore.benchmarks.sources import (
    DEFAULT_MEMORY_BUDGET_GB,
    DataSource,
    ImageData,
    entry_or_problem,
    load_source,
)
from clcore.benchmarks.tensor_loader import TensorBatchLoader
from clcore.config_rules import is_int, is_number, raise_if_problems

# where the accuracy matrix can be measured (``eval_split``)
EVAL_SPLITS = ("test", "val")

# images per split whose bytes ``data_fingerprint`` hashes: ~6 MB of CIFAR, a few milliseconds
FINGERPRINT_IMAGES = 2048


@dataclass
class TaskSplit:
    """One task's samples in one split: uint8 images and *local* labels (index in the task's classes)."""

    images: Tensor
    labels: Tensor


class CLBenchmark(LightningDataModule):
    """A sequence of tasks built from one base data set held in memory as uint8.

    Task variants (permuted, rotated, split) are *transforms of the base data*, never copies
    of it where avoidable: a subclass says which classes each task has (``classes_of``; a
    task's samples are those of its classes) and how a batch of that task is transformed
    (``task_transform``), which runs per batch, on the batch's device, after the transfer;
    ``_on_load`` sees the base data once, when it is loaded.

    Batches are ``(x, local_labels, task_id)``. ``train_dataloader``/``val_dataloader`` serve the
    current task; ``test_dataloader`` returns one loader per task in ``test_tasks`` (default: every
    task seen so far), in task order, so ``dataloader_idx`` is the task index.

    Several tasks' training data in one loader (joint training): set ``train_tasks`` to a list of
    task ids before ``fit``. ``train_dataloader``/``val_dataloader`` then serve the union of those
    tasks' samples, shuffled together, and a batch's third element is a ``[B]`` tensor with each
    sample's task id instead of an int; each sample gets its own task's transform
    (``prepare_mixed_batch``), and a consumer maps labels per task (``heads.targets(labels, t)``
    on each task's rows). ``setup_task`` resets it to ``None`` (the current task only).

    Its rules (task count, batch sizes, a registered source, ...) are ``config_problems``,
    read by the constructor and by ``clrun``'s pre-flight check; a subclass extends them.

    Args:
        source: a registered data source (``clcore.benchmarks.sources``: ``digits``, ``mnist``,
            ``cifar10``, ``cifar100``, ``fashion_mnist``, ``kmnist``, ``emnist_balanced``,
            ``emnist_letters``, ``svhn``, ``gtsrb``, or one added with ``register_source``), or any
            torchvision classification data set by name, ``torchvision:<ClassName>``
            (``clcore.benchmarks.torchvision_sources``).
        root: folder that holds the data set (torchvision's layout); unused for ``digits``.
        num_tasks: length of the sequence.
        batch_size / eval_batch_size: training and evaluation batch sizes. Evaluation has no
            gradients, so large batches cost nothing but memory.
        val_fraction: share of the base training set held out for validation (seeded).
        eval_split: the split every test (the accuracy matrix R) runs on: ``"test"``, or ``"val"``
            to choose hyperparameters on held-out training images without reading the test set
            (the validation images of every seen task, as the test images would be).
        seed: drives permutations, class orders and the train/validation split.
        download: let torchvision download missing files (needs internet).
        data_device: keep the whole data set on this device (e.g. ``cuda``): batches are then
            sliced where they are used and never copied from the host.
        model_input: ``{size, channels, mean, std}`` for a backbone with its own input convention
            (e.g. CLIP: 224 px, RGB, CLIP statistics), applied per batch after the task's
            transform (``ModelInput``); ``image_shape`` then reports the shape the model receives.
        options: the subclass's own keyword arguments, checked with these by ``config_problems``.
        memory_budget_gb: for a source read image by image (``gtsrb``, ``torchvision:<ClassName>``):
            its uint8 images are held in memory when they fit this many GB (10^9 bytes), and
            streamed from disk otherwise, each batch read by DataLoader workers (the same batches).
        stream_workers: worker processes per loader of streamed data (None: up to 8, one per core;
            0: read in the training process).
    """

    def __init__(
        self,
        source: str,
        num_tasks: int,
        root: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 2048,
        val_fraction: float = 0.1,
        eval_split: str = "test",
        seed: int = 0,
        download: bool = False,
        data_device: str | None = None,
        model_input: Mapping | None = None,
        options: Mapping[str, Any] | None = None,
        memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
        stream_workers: int | None = None,
    ) -> None:
        super().__init__()
        own = dict(
            source=source,
            num_tasks=num_tasks,
            root=root,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_fraction=val_fraction,
            eval_split=eval_split,
            download=download,
            memory_budget_gb=memory_budget_gb,
            stream_workers=stream_workers,
        )
        raise_if_problems(type(self).config_problems({**own, **(options or {})}))
        self.source, self.root, self.download = source, root, download
        self.num_tasks = num_tasks
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_fraction, self.seed = val_fraction, seed
        self.eval_split = eval_split
        self.data_device = data_device
        self.memory_budget_gb, self.stream_workers = memory_budget_gb, stream_workers
        self.model_input = ModelInput.from_config(model_input)
        self.current_task = 0
        self.test_tasks: list[int] | None = None
        self.train_tasks: list[int] | None = None
        self.data: ImageData | None = None
        self._splits: dict[tuple[str, int], TaskSplit] = {}
        self._mean: Tensor | None = None
        self._std: Tensor | None = None

    # ---- the rules: one place, read by the constructor and by clrun's pre-flight check ---------
    @classmethod
    def config_problems(cls, options: Mapping[str, Any]) -> list[str]:
        """Every problem with these options, each with its fix (``clcore.config_rules``).

        ``options`` are the constructor's keyword arguments as plain data (the config's
        ``benchmark.*`` keys; an absent optional key takes its default). Nothing is loaded: class
        counts and shapes come from the source's registry entry. A subclass with options of its
        own returns ``super().config_problems(options)`` plus its own problems.
        """
        problems = []
        source, entry = options.get("source"), cls.source_entry(options)
        if entry is None:
            problems.append(entry_or_problem(options)[1])
        elif entry.needs_root and options.get("root") is None:
            problems.append(
                f"benchmark.root is not set: source {source!r} needs the folder that holds its files"
            )
        num_tasks = options.get("num_tasks")
        if not is_int(num_tasks) or num_tasks < 1:
            problems.append(f"benchmark.num_tasks={num_tasks!r}: must be an integer >= 1")
        for key in ("batch_size", "eval_batch_size"):
            if key in options and (not is_int(options[key]) or options[key] < 1):
                problems.append(f"benchmark.{key}={options[key]!r}: must be an integer >= 1")
        val_fraction = options.get("val_fraction", 0.1)
        if not is_number(val_fraction) or not 0.0 <= val_fraction < 1.0:
            problems.append(f"benchmark.val_fraction={val_fraction!r}: must be in [0, 1)")
        eval_split = options.get("eval_split", "test")
        if eval_split not in EVAL_SPLITS:
            problems.append(
                f"benchmark.eval_split={eval_split!r}: choose test, or val (the held-out training images)"
            )
        elif eval_split == "val" and val_fraction == 0:
            problems.append(
                "benchmark.eval_split=val needs validation images: set benchmark.val_fraction > 0 (e.g. 0.1)"
            )
        budget = options.get("memory_budget_gb", DEFAULT_MEMORY_BUDGET_GB)
        if not is_number(budget) or not budget > 0:
            problems.append(
                f"benchmark.memory_budget_gb={budget!r}: must be a number > 0 (GB of uint8 images held in memory)"
            )
        workers = options.get("stream_workers")
        if workers is not None and (not is_int(workers) or workers < 0):
            problems.append(
                f"benchmark.stream_workers={workers!r}: must be an integer >= 0, or null for one per core (up to 8)"
            )
        return problems

    @staticmethod
    def source_entry(options: Mapping[str, Any]) -> DataSource | None:
        """The registry entry of ``options["source"]``, or None when it is not a registered source.

        A ``torchvision:<ClassName>`` source's entry is read from its data under ``options["root"]``
        (``sources.resolve_source``); None when that fails (``entry_or_problem`` says why).
        """
        return entry_or_problem(options)[0]

    # ---- what subclasses define ---------------------------------------------------------
    def classes_of(self, task_id: int) -> list[int]:
        """Base-data class ids of task ``task_id``, in local-label order."""
        raise NotImplementedError

    # Whether ``task_transform`` differs from task to task (Permuted, Rotated: true; Split: false).
    transform_depends_on_task: bool = False

    def task_transform(self, x: Tensor, task_id: int) -> Tensor:
        """Per-task transform of a normalised float batch ``[B, C, H, W]`` (default: none)."""
        return x

    def _on_load(self, data: ImageData) -> None:
        """Called once when the base data is loaded (e.g. to draw the class order from it)."""

    # ---- data --------------------------------------------------------------------------
    def num_classes_of(self, task_id: int) -> int:
        return len(self.classes_of(task_id))

    def class_names_of(self, task_id: int) -> list[str]:
        """Names of task ``task_id``'s classes in local-label order (for zero-shot text heads)."""
        names = self.load().class_names
        if not names:
            raise ValueError(f"data set {self.data.name!r} has no class names")
        return [names[c] for c in self.classes_of(task_id)]

    def prepare_data(self) -> None:
        self.load()

    def load(self) -> ImageData:
        """Load the base data once (``load_source``, cached), split train/validation by seed."""
        if self.data is not None:
            return self.data
        data = load_source(
            self.source, None if self.root is None else str(self.root), self.download, self.memory_budget_gb
        )
        self._on_load(data)
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(data.train_labels), generator=generator)
        num_val = int(round(self.val_fraction * len(order)))
        device = self.data_device
        self._split_images = {
            "train": data.train_images[order[num_val:]].to(device),
            "val": data.train_images[order[:num_val]].to(device),
            "test": data.test_images.to(device),
        }
        self._split_labels = {
            "train": data.train_labels[order[num_val:]].to(device),
            "val": data.train_labels[order[:num_val]].to(device),
            "test": data.test_labels.to(device),
        }
        self._mean = torch.tensor(data.mean).view(1, -1, 1, 1)
        self._std = torch.tensor(data.std).view(1, -1, 1, 1)
        self.data = data
        return data

    def data_fingerprint(self) -> str:
        """A short hex digest of the loaded base data, to tell whether a resumed run reads the same data.

        Covers the source's name and class count; for train and test: the images' and labels'
        shapes and dtypes, every label, and the bytes of up to ``FINGERPRINT_IMAGES`` images
        evenly strided over the split (always the first and the last). It costs milliseconds on
        CIFAR-100 and changes when a data set is replaced, relabelled, resized or cut.

        Not covered: a change to an image outside the sample (a few pixels edited in image 5 of
        CIFAR-10's 50,000 go unnoticed), the normalisation statistics and class names (constants
        of the source, not of its files), and the benchmark's own options (the config hash's job).
        """
        data = self.load()
        digest = hashlib.blake2b(digest_size=8)
        digest.update(f"{data.name}:{data.num_classes}".encode())
        for split in ("train", "test"):
            images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
            digest.update(f"{split}:{tuple(images.shape)}:{images.dtype}:{labels.dtype}".encode())
            digest.update(labels.cpu().contiguous().numpy())
            count = min(len(images), FINGERPRINT_IMAGES)
            # evenly strided, deterministic: 0, ..., len - 1
            sample = torch.arange(count) * (len(images) - 1) // max(count - 1, 1)
            digest.update(images.cpu()[sample].contiguous().numpy())
        return digest.hexdigest()

    def setup(self, stage: str | None = None) -> None:
        self.load()

    def task_split(self, split: str, task_id: int) -> TaskSplit:
        """Images and local labels of one task in ``train``/``val``/``test`` (built once, cached)."""
        key = (split, task_id)
        if key not in self._splits:
            self.load()
            images, labels = self._split_images[split], self._split_labels[split]
            classes = torch.tensor(self.classes_of(task_id), device=labels.device)
            if torch.equal(classes, torch.arange(self.data.num_classes, device=labels.device)):
                self._splits[key] = TaskSplit(images, labels)  # the whole split: share, do not copy
            else:
                keep = torch.isin(labels, classes)
                # local label = position of the base class in the task's class list
                local = (labels[keep].unsqueeze(1) == classes).float().argmax(1)
                self._splits[key] = TaskSplit(images[keep], local)
        return self._splits[key]

    # ---- the task protocol ---------------------------------------------------------------
    def setup_task(self, task_id: int) -> None:
        if not 0 <= task_id < self.num_tasks:
            raise ValueError(f"task {task_id + 1} is outside 1..{self.num_tasks}")
        self.current_task = task_id
        self.test_tasks = None
        self.train_tasks = None

    def _loader(self, split: str, task_id: int, train: bool) -> TensorBatchLoader:
        data = self.task_split(split, task_id)
        return self._batch_loader(data.images, data.labels, task_id, train, seed_task=task_id)

    def _union_loader(self, split: str, tasks: list[int], train: bool) -> TensorBatchLoader:
        """One loader over the samples of ``tasks``, with a per-sample task id (see the class docstring).

        The tasks' samples are concatenated (a copy, made once per ``fit``, not cached: the union
        changes every task) and shuffled together by the loader.
        """
        if not tasks:
            raise ValueError("train_tasks is empty: list at least one task to train on")
        splits = [self.task_split(split, t) for t in tasks]
        labels = torch.cat([data.labels for data in splits])
        task_ids = torch.cat([torch.full_like(data.labels, t) for data, t in zip(splits, tasks, strict=True)])
        images = torch.cat([data.images for data in splits])
        return self._batch_loader(images, labels, task_ids, train, seed_task=self.current_task)

    def _batch_loader(
        self, images: Tensor, labels: Tensor, task_id: int | Tensor, train: bool, seed_task: int
    ) -> TensorBatchLoader:
        trainer = self.trainer
        return TensorBatchLoader(
            images,
            labels,
            task_id,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            # a different but reproducible order per task; every process draws the same order
            seed=self.seed * 1_000_003 + seed_task,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            num_workers=self.stream_workers,
        )

    def train_dataloader(self) -> TensorBatchLoader:
        if self.train_tasks is not None:
            return self._union_loader("train", self.train_tasks, train=True)
        return self._loader("train", self.current_task, train=True)

    def val_dataloader(self) -> TensorBatchLoader | list:
        if self.val_fraction == 0:
            return []
        if self.train_tasks is not None:
            return self._union_loader("val", self.train_tasks, train=False)
        return self._loader("val", self.current_task, train=False)

    def test_dataloader(self) -> list[TensorBatchLoader]:
        tasks = self.test_tasks if self.test_tasks is not None else range(self.current_task + 1)
        return [self._loader(self.eval_split, t, train=False) for t in tasks]

    # ---- per-batch transform ---------------------------------------------------------------
    def normalise(self, images: Tensor) -> Tensor:
        """uint8 ``[B, C, H, W]`` -> float, per-channel ``(x / 255 - mean) / std``, on ``images.device``."""
        mean = self._mean.to(images.device)
        std = self._std.to(images.device)
        # In place on the one float copy: the same arithmetic, bit for bit, as
        # ``(x / 255 - mean) / std``, without two more batch-sized temporaries (measured 5x faster
        # on a 2000-image test batch, where fresh multi-megabyte buffers cost page faults).
        return images.float().div_(255.0).sub_(mean).div_(std)

    def transform_batch(self, images: Tensor, task_id: int) -> Tensor:
        """uint8 ``[B, C, H, W]`` -> normalised float, then the task's transform; on ``images.device``."""
        return self.task_transform(self.normalise(images), task_id)

    def prepare_batch(self, images: Tensor, task_id: int) -> Tensor:
        """uint8 ``[B, C, H, W]`` -> exactly what the model receives: ``transform_batch``, then ``model_input``."""
        x = self.transform_batch(images, task_id)
        return x if self.model_input is None else self.model_input(x, self._mean, self._std)

    def prepare_mixed_batch(self, images: Tensor, task_ids: Tensor) -> Tensor:
        """``prepare_batch`` for a batch mixing tasks: each sample gets its own task's transform.

        One ``prepare_batch`` per task present in the batch (a loop over tasks, not samples), each
        written back to its rows; ``task_ids`` is ``[B]``, on ``images.device``. Where the
        transform is the same for every task (``transform_depends_on_task`` false: Split), one
        call on the whole batch, without reading the task ids on the host.
        """
        if not self.transform_depends_on_task:
            return self.prepare_batch(images, 0)
        out = None
        for task_id in task_ids.unique().tolist():
            rows = (task_ids == task_id).nonzero().squeeze(1)
            x = self.prepare_batch(images[rows], task_id)
            if out is None:
                out = x.new_empty((len(images), *x.shape[1:]))
            out[rows] = x
        return out

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        """``(images, labels, task_id)`` to ``device``: two ``Tensor.to`` calls.

        Lightning's default walks any batch structure generically (about 15 Python calls a
        batch); this one is fixed. ``.to`` returns the tensor itself when it already sits on
        ``device`` (data resident on the GPU, or a CPU run).
        """
        images, labels, task_id = batch
        if isinstance(task_id, Tensor):  # per-sample task ids of a batch mixing tasks
            task_id = task_id.to(device, non_blocking=True)
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True), task_id

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Prepares each batch on its device (``prepare_batch``), except training batches for an
        algorithm that prepares them itself (``prepares_training_inputs``: replay keeps the uint8
        images in its memory and prepares them with the memory batch, ``prepare_mixed_batch``)."""
        trainer = self.trainer
        if (
            trainer is not None
            and trainer.training
            and getattr(trainer.lightning_module, "prepares_training_inputs", False)
        ):
            return batch
        images, labels, task_id = batch
        if isinstance(task_id, Tensor):
            return self.prepare_mixed_batch(images, task_id), labels, task_id
        return self.prepare_batch(images, task_id), labels, task_id

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the batches the model receives (after ``model_input``)."""
        data_shape = self.load().image_shape
        return data_shape if self.model_input is None else self.model_input.shape(data_shape)

    @property
    def input_dim(self) -> int:
        c, h, w = self.image_shape
        return c * h * w
