"""Multi-data-set sequences: each task is a whole data set of its own, e.g. 5-datasets.

5-datasets (Ebrahimi et al., ECCV 2020, "Adversarial Continual Learning"; Saha et al., ICLR 2021,
GPM) is CIFAR-10, MNIST, SVHN, notMNIST and Fashion-MNIST, one task each, every image at 32x32x3;
HAT's main result (Serra et al., ICML 2018) is a sequence of eight such data sets. Task ``t`` holds
*all* classes of its data set ``sources[t]`` with their own labels ``0..C_t-1`` (the heads get
``C_t`` classes), so TIL is the natural paradigm; CIL works (the heads offset each task's classes);
DIL needs every data set to have the same class count (``paradigm_problems``).

The rules, stated once:

* **Common layout**, made once when the data is loaded, into uint8 ``[N, channels, H, W]``:
  ``fit=pad`` centres each image on a black (0) canvas of ``image_size`` (28x28 -> 32x32 pads 2
  pixels a side: HAT's, ACL's and GPM's loaders do exactly this, ``transforms.Pad(2, fill=0)``);
  a data set larger than ``image_size`` is refused. ``fit=resize`` resizes to ``image_size`` with
  bilinear interpolation and antialiasing (torch's, like PIL's ``Image.resize(BILINEAR)``), rounded
  back to uint8, ignoring the aspect ratio; an image already of that size is left as it is.
  Channels: grey -> RGB repeats the grey channel three times; RGB -> grey is the ITU-R 601 luma
  ``0.299 R + 0.587 G + 0.114 B`` (PIL's ``convert("L")``), rounded.
  Once, not per batch: a replay memory and a joint loader hold images of several tasks in one
  uint8 tensor, which needs one shape; and the per-batch work stays one normalisation.
* **Per-task normalisation**: a batch of task ``t`` is normalised with task ``t``'s statistics
  (``prepare_batch``; ``prepare_mixed_batch`` gives each sample its own task's). They are the
  source's registered mean/std carried through the conversion where that is exact: unchanged, and
  repeated for grey -> RGB; for padding with zeros, of area fraction ``a = hw / HW``,
  ``mean' = a m`` and ``std'^2 = a (s^2 + m^2) - a^2 m^2`` (MNIST's 0.1307/0.3081 become GPM's
  0.1/0.2752). Where a resize or the luma conversion changes the pixels, they are measured on
  the source's converted training images (per channel, over every pixel, like the registered ones).
* **Validation**: each task holds out ``val_fraction`` of its own training images, drawn from
  ``seed`` and the task's position.

Memory: the sequence is held once in the common layout (one uint8 tensor per split; every task's
images are a slice of it, never a copy), beside the sources' native copies in ``load_source``'s
cache. 5-datasets at 32x32x3 is ~318,000 images: ~0.98 GB in the common layout plus ~0.61 GB native.

notMNIST (letters A-J in many fonts, 28x28 grey), one of ``five_datasets``' tasks, is the source
``notmnist`` (``clcore.benchmarks.notmnist``: a fixed train/test split from its file names).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from clcore.benchmarks.base import FINGERPRINT_IMAGES, CLBenchmark, TaskSplit
from clcore.benchmarks.notmnist import (  # noqa: F401  (re-exported: five_datasets' notMNIST)
    NOTMNIST,
    NOTMNIST_CLASSES,
    NOTMNIST_FOLDER,
    NOTMNIST_URL,
    load_notmnist,
    notmnist_is_test,
    register_notmnist,
)
from clcore.benchmarks.sources import (
    DEFAULT_MEMORY_BUDGET_GB,
    SOURCES,
    TORCHVISION_PREFIX,
    DataSource,
    ImageData,
    entry_or_problem,
    load_source,
)
from clcore.config_rules import choice_problem, is_int

log = logging.getLogger(__name__)

FITS = ("resize", "pad")
# ITU-R 601-2 luma: RGB -> grey, as PIL's convert("L")
LUMA = (0.299, 0.587, 0.114)
# images converted at a time: bounds the float copy a resize needs (4096 x 3 x 32 x 32 x 4 B = 50 MB)
CONVERT_CHUNK = 4096


@dataclass(frozen=True)
class Conversion:
    """How one data set of shape ``(C, h, w)`` is brought to ``(channels, H, W)``: each step, stated."""

    source_shape: tuple[int, int, int]
    channels: int
    size: tuple[int, int]
    fit: str

    @property
    def channel_rule(self) -> str:
        """``same``, ``repeat`` (grey -> RGB) or ``luma`` (RGB -> grey)."""
        source = self.source_shape[0]
        if source == self.channels:
            return "same"
        return "repeat" if source == 1 else "luma"

    @property
    def resizes(self) -> bool:
        return self.fit == "resize" and tuple(self.source_shape[1:]) != self.size

    @property
    def padding(self) -> tuple[int, int, int, int] | None:
        """``(left, right, top, bottom)`` for ``F.pad`` under ``fit=pad``; None when nothing is padded."""
        (_, h, w), (height, width) = self.source_shape, self.size
        if self.fit != "pad" or (h, w) == (height, width):
            return None
        top, left = (height - h) // 2, (width - w) // 2
        return (left, width - w - left, top, height - h - top)

    @property
    def statistics_are_exact(self) -> bool:
        """Whether the source's registered mean/std carry over by formula (else they are measured)."""
        return not self.resizes and self.channel_rule != "luma"

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 ``[B, C, h, w]`` -> uint8 ``[B, channels, H, W]`` (the images themselves when unchanged)."""
        x = images
        if self.channel_rule == "luma" or self.resizes:
            pixels = images.float()
            if self.channel_rule == "luma":
                weights = torch.tensor(LUMA, device=pixels.device).view(1, 3, 1, 1)
                pixels = (pixels * weights).sum(1, keepdim=True)
            if self.resizes:
                pixels = F.interpolate(
                    pixels, size=self.size, mode="bilinear", antialias=True, align_corners=False
                )
            x = pixels.round_().clamp_(0, 255).to(torch.uint8)
        if self.padding is not None:
            x = F.pad(x, self.padding, value=0)
        if self.channel_rule == "repeat":
            x = x.expand(-1, self.channels, -1, -1)
        return x

    def statistics(self, mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
        """The registered per-channel ``mean``/``std`` of the source, carried through (``statistics_are_exact``)."""
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        padding = self.padding
        if padding is not None:
            (_, h, w), (height, width) = self.source_shape, self.size
            a = (h * w) / (height * width)
            std = [(a * (s * s + m * m) - a * a * m * m) ** 0.5 for m, s in zip(mean, std, strict=True)]
            mean = [a * m for m in mean]
        if self.channel_rule == "repeat":
            mean, std = mean * self.channels, std * self.channels
        return mean, std


def _plain_size(image_size: Any) -> tuple[int, int] | None:
    """``image_size`` (one int, or ``[H, W]``) as ``(H, W)``; None when it is neither."""
    if is_int(image_size):
        return (image_size, image_size)
    if isinstance(image_size, Sequence) and not isinstance(image_size, str) and len(image_size) == 2:
        if all(is_int(side) for side in image_size):
            return (image_size[0], image_size[1])
    return None


def _plain_sources(sources: Any) -> list | None:
    if isinstance(sources, Sequence) and not isinstance(sources, str):
        return list(sources)
    return None


def _entries(options: Mapping[str, Any]) -> tuple[list[DataSource | None], list[str], list[str]]:
    """Each listed source's entry (None where it has none), the unknown names, and the other
    problems finding an entry had (a ``torchvision:<ClassName>`` whose data cannot be opened)."""
    root, download = options.get("root"), bool(options.get("download", False))
    entries, unknown, problems = [], [], []
    for source in _plain_sources(options.get("sources")) or []:
        entry, problem = entry_or_problem({"source": source, "root": root, "download": download})
        entries.append(entry)
        if entry is None and isinstance(source, str) and source.startswith(TORCHVISION_PREFIX):
            problems.append(problem.replace("benchmark.source=", "benchmark.sources: ", 1))
        elif entry is None:
            unknown.append(source)
    return entries, unknown, problems


class MultiDatasetBenchmark(CLBenchmark):
    """A sequence of whole data sets, one task each, at one common image shape (see the module docstring).

    Args:
        sources: one data source per task, in task order: a registered name
            (``clcore.benchmarks.sources``) or ``torchvision:<ClassName>``.
        num_tasks: the sequence is the first ``num_tasks`` sources (at most ``len(sources)``; a
            shorter run of the same sequence, e.g. for a quick check, needs no new list).
        image_size: the common ``H`` x ``W`` (one int for square images, or ``[H, W]``).
        channels: the common channel count, 1 (grey) or 3 (RGB).
        fit: ``pad`` (centre on a black canvas; no data set may be larger) or ``resize`` (bilinear).
        root: the folder that holds every source that needs one, each in its own layout.
        memory_budget_gb: as ``CLBenchmark``; a source the budget would stream from disk is refused
            when loaded: the sequence converts every image once, in memory.

    The other arguments (download, batch sizes, val_fraction, eval_split, seed, data_device,
    model_input) are ``CLBenchmark``'s.

    ``load()`` returns the whole sequence as one ``ImageData`` in the common layout: task after
    task, each task's training images in the seed's order (its training part, then its held-out
    part), labels *global* (task ``t``'s classes are ``offset_t .. offset_t + C_t - 1``, the order
    ``classes_of`` and a CIL head use), ``mean``/``std`` the statistics of all training images
    pooled (not used for normalising: each task has its own, ``task_statistics``).
    """

    transform_depends_on_task = True

    def __init__(
        self,
        sources: list[str],
        num_tasks: int,
        image_size: int | tuple[int, int] = 32,
        channels: int = 3,
        fit: Literal["resize", "pad"] = "resize",
        root: str | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 2048,
        val_fraction: float = 0.1,
        eval_split: str = "test",
        seed: int = 0,
        download: bool = False,
        data_device: str | None = None,
        model_input: Mapping | None = None,
        memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
    ) -> None:
        listed = _plain_sources(sources)
        size = image_size if is_int(image_size) else (_plain_sources(image_size) or image_size)
        options = dict(
            sources=listed if listed is not None else sources, image_size=size, channels=channels, fit=fit
        )
        name = "+".join(map(str, listed)) if listed else str(sources)
        super().__init__(
            name,
            num_tasks,
            root=root,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            val_fraction=val_fraction,
            eval_split=eval_split,
            seed=seed,
            download=download,
            data_device=data_device,
            model_input=model_input,
            options=options,
            memory_budget_gb=memory_budget_gb,
        )
        self.sources: list[str] = [str(source) for source in listed][:num_tasks]
        self.image_size: tuple[int, int] = _plain_size(size)
        self.channels, self.fit = channels, fit
        self.entries: list[DataSource] = _entries(dict(sources=self.sources, root=root, download=download))[0]
        self.conversions = [
            Conversion(entry.image_shape, channels, self.image_size, fit) for entry in self.entries
        ]
        self._task_mean: Tensor | None = None  # [T, C, 1, 1]
        self._task_std: Tensor | None = None
        self._on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self._bounds: dict[str, list[tuple[int, int]]] = {}  # split -> (start, stop) of each task
        self._local_labels: dict[str, Tensor] = {}
        self._offsets: list[int] = []
        self._source_data: list[ImageData] = []

    # ---- the rules -------------------------------------------------------------------------------
    @classmethod
    def config_problems(cls, options: Mapping[str, Any]) -> list[str]:
        """``CLBenchmark``'s rules (but its one ``source``), then: every source registered (with a root
        where one needs it), one task per source, ``channels`` 1 or 3, a positive ``image_size``, a
        ``fit`` it knows, each source's channels convertible and, under ``fit=pad``, no source larger."""
        common = {key: value for key, value in options.items() if key != "source"}
        problems = [p for p in super().config_problems(common) if not p.startswith("benchmark.source=")]
        sources = _plain_sources(options.get("sources"))
        entries: list[DataSource] = []
        if not sources or not all(isinstance(source, str) for source in sources):
            problems.append(
                f"benchmark.sources={options.get('sources')!r}: list one registered data source per task "
                f"(e.g. [cifar10, mnist])"
            )
        else:
            found, unknown, found_problems = _entries(options)
            if unknown:
                problems.append(
                    f"benchmark.sources: {', '.join(map(repr, unknown))} unknown: choose from "
                    f"{', '.join(SOURCES)} (or name any torchvision data set, {TORCHVISION_PREFIX}<ClassName>, "
                    f"or add one with clcore.benchmarks.sources.register_source)"
                )
            problems += found_problems
            entries = [entry for entry in found if entry is not None]
            rooted = sorted({entry.name for entry in entries if entry.needs_root})
            if rooted and options.get("root") is None:
                problems.append(
                    f"benchmark.root is not set: source(s) {', '.join(rooted)} need the folder that holds their files"
                )
            num_tasks = options.get("num_tasks")
            if is_int(num_tasks) and num_tasks > len(sources):
                problems.append(
                    f"benchmark.num_tasks={num_tasks} but benchmark.sources lists {len(sources)} data sets: "
                    f"one task per data set, so set benchmark.num_tasks to at most {len(sources)} "
                    f"(or list {num_tasks} sources)"
                )
        channels = options.get("channels", 3)
        if channels not in (1, 3) or not is_int(channels):
            problems.append(f"benchmark.channels={channels!r}: must be 1 (grey) or 3 (RGB)")
        size = _plain_size(options.get("image_size", 32))
        if size is None or min(size) < 1:
            problems.append(
                f"benchmark.image_size={options.get('image_size')!r}: must be a positive integer or [height, width]"
            )
        fit = options.get("fit", "resize")
        if fit not in FITS:
            problems.append(choice_problem("benchmark.fit", fit, FITS))
        for entry in entries:
            source_channels, h, w = entry.image_shape
            if source_channels not in (1, 3):
                problems.append(
                    f"benchmark.sources: {entry.name} has {source_channels} channels: only grey (1) and "
                    f"RGB (3) images can be brought to benchmark.channels"
                )
            if fit == "pad" and size is not None and (h > size[0] or w > size[1]):
                problems.append(
                    f"benchmark.fit=pad cannot shrink {entry.name}'s {h}x{w} images to "
                    f"benchmark.image_size={size[0]}x{size[1]}: use benchmark.fit=resize, or a larger image_size"
                )
        return problems

    @classmethod
    def paradigm_problems(cls, options: Mapping[str, Any], paradigm: str | None) -> list[str]:
        """DIL shares one head over every task: the sources must have the same class count.

        From the sources' entries, before anything is loaded (for ``clrun``'s pre-flight check).
        """
        counts = {entry.name: entry.num_classes for entry in _entries(options)[0] if entry is not None}
        if paradigm != "dil" or len(set(counts.values())) <= 1:
            return []
        listed = ", ".join(f"{source} {count}" for source, count in counts.items())
        return [
            f"paradigm=dil needs the same classes in every task, but benchmark.sources have different "
            f"class counts ({listed}): use paradigm=til or paradigm=cil, or sources with one class count"
        ]

    # ---- data --------------------------------------------------------------------------------------
    def classes_of(self, task_id: int) -> list[int]:
        """Task ``task_id``'s class ids in the sequence's global numbering (``load().train_labels``)."""
        self.load()
        start = self._offsets[task_id]
        return list(range(start, start + self._source_data[task_id].num_classes))

    def num_classes_of(self, task_id: int) -> int:
        return self.entries[task_id].num_classes

    def class_names_of(self, task_id: int) -> list[str]:
        """The class names of task ``task_id``'s data set, in its label order."""
        self.load()
        data = self._source_data[task_id]
        if not data.class_names:
            raise ValueError(f"data set {data.name!r} (task {task_id + 1}) has no class names")
        return list(data.class_names)

    def source_data(self, task_id: int) -> ImageData:
        """Task ``task_id``'s data set as its source loaded it (native shape, before the conversion)."""
        self.load()
        return self._source_data[task_id]

    def load(self) -> ImageData:
        """Load every source (``load_source``, cached), convert each to the common layout once, split by seed."""
        if self.data is not None:
            return self.data
        root = None if self.root is None else str(self.root)
        natives = [load_source(source, root, self.download, self.memory_budget_gb) for source in self.sources]
        for data in natives:
            if not (isinstance(data.train_images, Tensor) and isinstance(data.test_images, Tensor)):
                raise ValueError(
                    f"benchmark.sources: {data.name} is larger than benchmark.memory_budget_gb="
                    f"{self.memory_budget_gb} and would be streamed from disk, but a multi-data-set sequence "
                    f"converts every image once, in memory: raise benchmark.memory_budget_gb"
                )
        channels, (height, width) = self.channels, self.image_size
        num_train = sum(len(data.train_labels) for data in natives)
        num_test = sum(len(data.test_labels) for data in natives)
        images = {
            "train": torch.empty((num_train, channels, height, width), dtype=torch.uint8),
            "test": torch.empty((num_test, channels, height, width), dtype=torch.uint8),
        }
        local: dict[str, list[Tensor]] = {"train": [], "test": []}
        global_labels: dict[str, list[Tensor]] = {"train": [], "test": []}
        bounds: dict[str, list[tuple[int, int]]] = {"train": [], "val": [], "test": []}
        means, stds, offsets = [], [], []
        train_start = test_start = offset = 0
        for task_id, (data, conversion) in enumerate(zip(natives, self.conversions, strict=True)):
            order = torch.randperm(len(data.train_labels), generator=self._split_generator(task_id))
            num_val = int(round(self.val_fraction * len(order)))
            order = torch.cat([order[num_val:], order[:num_val]])  # training part, then held-out part
            measure = not conversion.statistics_are_exact
            moments = _write_converted(
                data.train_images, order, conversion, images["train"], train_start, measure
            )
            _write_converted(data.test_images, None, conversion, images["test"], test_start, False)
            if measure:
                mean, std = _mean_std(moments, len(order) * height * width)
            else:
                mean, std = conversion.statistics(data.mean, data.std)
            means.append(mean)
            stds.append(std)
            for split, labels in (("train", data.train_labels[order]), ("test", data.test_labels)):
                local[split].append(labels)
                global_labels[split].append(labels + offset)
            train_stop, test_stop = train_start + len(order), test_start + len(data.test_labels)
            bounds["train"].append((train_start, train_stop - num_val))
            bounds["val"].append((train_stop - num_val, train_stop))
            bounds["test"].append((test_start, test_stop))
            offsets.append(offset)
            train_start, test_start, offset = train_stop, test_stop, offset + data.num_classes
        device = self.data_device
        self._task_mean = torch.tensor(means, dtype=torch.float32).view(len(natives), channels, 1, 1)
        self._task_std = torch.tensor(stds, dtype=torch.float32).view(len(natives), channels, 1, 1)
        self._mean, self._std = self._pooled_statistics(natives)
        self._offsets, self._source_data, self._bounds = offsets, natives, bounds
        self._local_labels = {split: torch.cat(labels).to(device) for split, labels in local.items()}
        names = [data.class_names for data in natives]
        self.data = ImageData(
            name=self.source,
            train_images=images["train"].to(device),
            train_labels=torch.cat(global_labels["train"]).to(device),
            test_images=images["test"].to(device),
            test_labels=torch.cat(global_labels["test"]).to(device),
            num_classes=offset,
            mean=tuple(self._mean.flatten().tolist()),
            std=tuple(self._std.flatten().tolist()),
            class_names=tuple(name for task_names in names for name in task_names) if all(names) else (),
        )
        return self.data

    def _split_generator(self, task_id: int) -> torch.Generator:
        """The generator of task ``task_id``'s train/validation split: from ``seed`` and the task's position."""
        key = hashlib.blake2b(f"{self.seed}:{task_id}:val".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(key, "little") >> 1)

    def _pooled_statistics(self, natives: list[ImageData]) -> tuple[Tensor, Tensor]:
        """Per-channel mean/std of every training image of the sequence, from the tasks' (exact pooling)."""
        counts = torch.tensor([float(len(data.train_labels)) for data in natives]).view(-1, 1, 1, 1)
        weights = counts / counts.sum()
        mean = (weights * self._task_mean).sum(0, keepdim=True)
        second = (weights * (self._task_std**2 + self._task_mean**2)).sum(0, keepdim=True)
        return mean, (second - mean**2).clamp_min(0).sqrt()

    def task_split(self, split: str, task_id: int) -> TaskSplit:
        """Task ``task_id``'s images (common layout) and local labels in ``split``: slices, never copies."""
        key = (split, task_id)
        if key not in self._splits:
            self.load()
            start, stop = self._bounds[split][task_id]
            held = "test" if split == "test" else "train"
            images = self.data.test_images if held == "test" else self.data.train_images
            self._splits[key] = TaskSplit(images[start:stop], self._local_labels[held][start:stop])
        return self._splits[key]

    def data_fingerprint(self) -> str:
        """``CLBenchmark.data_fingerprint``'s digest of every source, in task order (their native data:
        the conversion is the benchmark's options, which the config hash covers)."""
        self.load()
        digest = hashlib.blake2b(digest_size=8)
        for data in self._source_data:
            _digest_data(digest, data)
        return digest.hexdigest()

    # ---- per-batch transform: each task its own normalisation --------------------------------------
    def task_statistics(self, task_id: int) -> tuple[Tensor, Tensor]:
        """``(mean, std)`` of task ``task_id``, each ``[1, C, 1, 1]`` in [0, 1] pixel units."""
        self.load()
        return self._task_mean[task_id : task_id + 1], self._task_std[task_id : task_id + 1]

    def _statistics_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Every task's ``[T, C, 1, 1]`` mean and std on ``device`` (copied there once)."""
        if device not in self._on_device:
            self.load()
            self._on_device[device] = (self._task_mean.to(device), self._task_std.to(device))
        return self._on_device[device]

    def transform_batch(self, images: Tensor, task_id: int) -> Tensor:
        """uint8 ``[B, C, H, W]`` -> float normalised with task ``task_id``'s statistics (in place on the copy)."""
        means, stds = self._statistics_on(images.device)
        mean, std = means[task_id : task_id + 1], stds[task_id : task_id + 1]
        return self.task_transform(images.float().div_(255.0).sub_(mean).div_(std), task_id)

    def prepare_batch(self, images: Tensor, task_id: int) -> Tensor:
        x = self.transform_batch(images, task_id)
        if self.model_input is None:
            return x
        means, stds = self._statistics_on(x.device)
        return self.model_input(x, means[task_id : task_id + 1], stds[task_id : task_id + 1])

    def prepare_mixed_batch(self, images: Tensor, task_ids: Tensor) -> Tensor:
        """``prepare_batch`` with each sample's own task's statistics, in one pass: the statistics are
        gathered per sample (``[B, C, 1, 1]``), so no task id is read on the host. Element for element
        the same arithmetic as ``prepare_batch``, so the same result, bit for bit."""
        means, stds = self._statistics_on(images.device)
        mean, std = means.index_select(0, task_ids), stds.index_select(0, task_ids)
        x = images.float().div_(255.0).sub_(mean).div_(std)
        return x if self.model_input is None else self.model_input(x, mean, std)


def _write_converted(
    images: Tensor, order: Tensor | None, conversion: Conversion, out: Tensor, start: int, measure: bool
) -> Tensor:
    """Write ``conversion(images[order])`` into ``out[start:]``, a chunk at a time; with ``measure``,
    return the per-channel ``[sum, sum of squares]`` of the written pixels in [0, 1] units
    (float64, ``[2, C]``; zeros otherwise)."""
    count = len(images) if order is None else len(order)
    moments = torch.zeros(2, out.shape[1], dtype=torch.float64)
    for begin in range(0, count, CONVERT_CHUNK):
        end = min(begin + CONVERT_CHUNK, count)
        chunk = images[begin:end] if order is None else images[order[begin:end]]
        converted = conversion(chunk)
        out[start + begin : start + end] = converted
        if measure:
            pixels = converted.to(torch.float64).div_(255.0)
            moments[0] += pixels.sum((0, 2, 3))
            moments[1] += pixels.square_().sum((0, 2, 3))
    return moments


def _mean_std(moments: Tensor, pixels_per_channel: int) -> tuple[list[float], list[float]]:
    mean = moments[0] / pixels_per_channel
    variance = (moments[1] / pixels_per_channel - mean.square()).clamp_min(0)
    return mean.tolist(), variance.sqrt().tolist()


def _digest_data(digest, data: ImageData) -> None:
    """One data set into ``digest``, exactly as ``CLBenchmark.data_fingerprint`` reads its base data."""
    digest.update(f"{data.name}:{data.num_classes}".encode())
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        digest.update(f"{split}:{tuple(images.shape)}:{images.dtype}:{labels.dtype}".encode())
        digest.update(labels.cpu().contiguous().numpy())
        count = min(len(images), FINGERPRINT_IMAGES)
        sample = torch.arange(count) * (len(images) - 1) // max(count - 1, 1)
        digest.update(images.cpu()[sample].contiguous().numpy())
