"""Data sets read through torchvision, image by image: GTSRB, and any classification data set by name.

**Naming any torchvision data set.** ``benchmark.source=torchvision:<ClassName>`` uses the class
``torchvision.datasets.<ClassName>`` with the files under ``benchmark.root`` in that class's own
layout, e.g. ``torchvision:FashionMNIST``, ``torchvision:STL10``, ``torchvision:Flowers102/size:64``.
Options follow the class name, each ``/<key>:<value>`` (a colon, not ``=``, so that a Hydra
override needs no quotes):

* ``size:<S>`` or ``size:<H>x<W>``: resize every image to S x S (or H x W) once, at load time
  (PIL's bilinear filter, which averages over the source pixels when shrinking; the aspect ratio
  is not kept). Needed for data sets whose images differ in size (Flowers102, Food101, ...).
* ``channels:1`` or ``channels:3``: convert every image to grey (PIL's ITU-R 601 luma) or RGB.
  Default: grey when the first training image is grey, RGB otherwise (any other image follows it).
* any other key: a keyword argument of the class, its value as written (an integer when it is
  one, ``true``/``false`` a boolean), e.g. ``torchvision:EMNIST/split:digits``.

The training and test sets: ``train=True`` / ``train=False`` when the class takes ``train``; else
``split=``, with the first of ``train``, ``trainval`` and the first of ``test``, ``val`` that the
class accepts (``split`` given as an option means something else then, and ``train`` must exist).
``download=benchmark.download`` when the class takes it.

**What is read from the data**, since torchvision states it only once a data set is opened: the
class count (``len(dataset.classes)`` when the class lists its class names, else one more than
the largest label of either split), the class names (``classes``, else the label numbers) and the
image shape (the first training image's, after the options). The entry is built when the name is
first resolved (``sources.resolve_source``, which a benchmark's rules and ``clrun``'s pre-flight
check call with ``benchmark.root``): opening a data set constructs its torchvision object and
reads its labels and one image, not the images. The per-channel mean and standard deviation are
measured on the training images (every one when held in memory; an evenly strided sample of at
most ``STATS_SAMPLE`` when streamed), as the named sources' published values were.

**Memory budget.** The uint8 images take ``(train + test images) x C x H x W`` bytes. Within
``benchmark.memory_budget_gb`` they are read once, by DataLoader workers, into the in-memory uint8
layout every benchmark uses; beyond it the ``ImageData`` holds ``StreamedImages`` instead, and each
batch is read from disk by workers (``clcore.benchmarks.streamed``), the same batches in the same
order.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clcore.benchmarks.errors import DamagedDataError, DataNotFoundError
from clcore.benchmarks.readers import check_labels
from clcore.benchmarks.sources import (
    DEFAULT_MEMORY_BUDGET_GB,
    TORCHVISION_PREFIX,
    DataSource,
    ImageData,
)
from clcore.benchmarks.streamed import SampleReader, StreamedImages, default_workers, image_to_uint8

log = logging.getLogger(__name__)

# Training images whose pixels give a streamed data set's mean and standard deviation (evenly strided).
STATS_SAMPLE = 10_000

# Below this many images a split is read in this process: starting workers would cost more.
WORKERS_FROM = 4096

# The split keywords tried, in order, for a class with ``split=`` (the first it accepts).
TRAIN_SPLITS = ("train", "trainval")
TEST_SPLITS = ("test", "val")

SYNTAX = (
    f"{TORCHVISION_PREFIX}<ClassName>[/<key>:<value>...], e.g. {TORCHVISION_PREFIX}STL10 or "
    f"{TORCHVISION_PREFIX}Flowers102/size:64 (options: size:<S> or size:<H>x<W>, channels:1 or 3, "
    f"or a keyword argument of the class)"
)


@dataclass(frozen=True)
class TorchvisionName:
    """A parsed ``torchvision:<ClassName>[/<key>:<value>...]``: the class, the resize, the channels,
    and the class's own keyword arguments."""

    name: str
    class_name: str
    size: tuple[int, int] | None = None
    channels: int | None = None
    options: tuple[tuple[str, Any], ...] = ()


def parse_name(name: str) -> TorchvisionName:
    """Parse a source name of the ``torchvision:`` syntax (``SYNTAX``); ``ValueError`` saying what is wrong."""
    if not name.startswith(TORCHVISION_PREFIX):
        raise ValueError(f"{name!r} is not a torchvision source name: {SYNTAX}")
    class_name, *parts = name[len(TORCHVISION_PREFIX) :].split("/")
    if not class_name.isidentifier():
        raise ValueError(f"{name!r} names no class: {SYNTAX}")
    size, channels, options = None, None, {}
    for part in parts:
        key, colon, value = part.partition(":")
        if not colon or not key or not value:
            raise ValueError(f"option {part!r} is not <key>:<value>: {SYNTAX}")
        if key in options or (key == "size" and size) or (key == "channels" and channels):
            raise ValueError(f"option {key!r} is given twice")
        if key == "size":
            sides = value.lower().split("x")
            if len(sides) not in (1, 2) or not all(side.isdigit() and int(side) > 0 for side in sides):
                raise ValueError(f"size:{value} is not size:<S> or size:<H>x<W> with positive integers")
            size = (int(sides[0]), int(sides[-1]))
        elif key == "channels":
            if value not in ("1", "3"):
                raise ValueError(f"channels:{value} must be channels:1 (grey) or channels:3 (RGB)")
            channels = int(value)
        else:
            options[key] = _option_value(value)
    return TorchvisionName(name, class_name, size, channels, tuple(options.items()))


def _option_value(value: str) -> Any:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    try:
        return int(value)
    except ValueError:
        return value


@dataclass(frozen=True)
class Opened:
    """A torchvision data set's training and test sets, opened but not read: a reader of each split's
    images, every label, the class count and names, and the image shape ``(C, H, W)``."""

    name: str
    root: Path
    train: SampleReader
    test: SampleReader
    train_labels: Tensor
    test_labels: Tensor
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]

    @property
    def nbytes(self) -> int:
        """Bytes of the uint8 images of both splits."""
        return (len(self.train) + len(self.test)) * math.prod(self.image_shape)


def open_torchvision(spec: TorchvisionName, root: str | Path, download: bool = False) -> Opened:
    """Open ``spec``'s data set under ``root``: construct the torchvision object of each split, read
    the labels and the first training image (see the module docstring for the rules).

    ``ValueError``: the class does not exist, is no data set, refuses an option, or has neither
    ``train=`` nor ``split=``. ``DataNotFoundError``: torchvision finds no data (the message says
    where to put it and whether ``benchmark.download=true`` can fetch it). ``DamagedDataError``:
    torchvision fails otherwise on the data present.
    """
    dataset_class = _dataset_class(spec.class_name)
    parameters = inspect.signature(dataset_class).parameters
    keywords = dict(spec.options)
    if "download" in parameters:
        keywords["download"] = download
    root = Path(root).expanduser()
    if "train" in parameters:
        splits = ([{"train": True}], [{"train": False}])
    elif "split" in parameters and "split" not in keywords:
        splits = tuple([{"split": split} for split in names] for names in (TRAIN_SPLITS, TEST_SPLITS))
    else:
        raise ValueError(
            f"torchvision.datasets.{spec.class_name} takes neither train= nor split= (train/test): "
            f"clcore cannot tell its training set from its test set"
        )
    train_set, test_set = (_construct(dataset_class, spec, root, keywords, tried) for tried in splits)
    first = _first_image(train_set, spec, root)
    mode = _mode_of(first, spec)
    shape = tuple(image_to_uint8(first, mode, spec.size).shape)
    train_labels, test_labels = _labels(train_set, spec.name), _labels(test_set, spec.name)
    classes = getattr(train_set, "classes", None)
    if isinstance(classes, Sequence) and classes and all(isinstance(c, tuple) and c for c in classes):
        classes = [c[0] for c in classes]  # ImageNet: each class a tuple of synonyms
    largest = int(max(train_labels.max(), test_labels.max())) if len(test_labels) else int(train_labels.max())
    if isinstance(classes, Sequence) and all(isinstance(c, str) for c in classes) and len(classes) > largest:
        class_names = tuple(str(c).replace("_", " ") for c in classes)
    else:
        class_names = tuple(str(label) for label in range(largest + 1))
    for split, labels in (("train", train_labels), ("test", test_labels)):
        check_labels(f"{root} ({spec.name}, {split} labels)", labels, len(class_names))
    return Opened(
        spec.name,
        root,
        SampleReader(spec.name, train_set, mode, spec.size, shape),
        SampleReader(spec.name, test_set, mode, spec.size, shape),
        train_labels,
        test_labels,
        len(class_names),
        class_names,
        shape,
    )


def _dataset_class(class_name: str) -> type:
    import difflib

    import torchvision.datasets
    from torch.utils.data import Dataset

    dataset_class = getattr(torchvision.datasets, class_name, None)
    if not (isinstance(dataset_class, type) and issubclass(dataset_class, Dataset)):
        known = [
            name
            for name in dir(torchvision.datasets)
            if isinstance(getattr(torchvision.datasets, name), type)
            and issubclass(getattr(torchvision.datasets, name), Dataset)
        ]
        close = difflib.get_close_matches(class_name, known, n=3)
        hint = f" (did you mean {', '.join(TORCHVISION_PREFIX + c for c in close)}?)" if close else ""
        raise ValueError(f"torchvision.datasets has no data set class {class_name!r}{hint}")
    return dataset_class


def _construct(
    dataset_class: type, spec: TorchvisionName, root: Path, keywords: dict, tried: list[dict]
) -> Any:
    """The data set of the first of ``tried`` (split keywords) the class accepts."""
    refused = []
    for split in tried:
        try:
            return dataset_class(str(root), **keywords, **split)
        except TypeError as error:
            raise ValueError(
                f"torchvision.datasets.{spec.class_name} cannot be built with the options "
                f"{dict(spec.options)}: {error} (its keyword arguments go after the name, as /<key>:<value>)"
            ) from None
        except ValueError as error:
            if "split" in split and "split" in str(error):  # torchvision's verify_str_arg: not this name
                refused.append(split["split"])
                continue
            raise _read_failure(spec, root, keywords, error) from error
        except Exception as error:  # RuntimeError (not found), OSError, ... from torchvision
            raise _read_failure(spec, root, keywords, error) from error
    raise ValueError(
        f"torchvision.datasets.{spec.class_name} accepts none of split={', '.join(refused)}: "
        f"clcore cannot tell its training set from its test set"
    )


def _read_failure(spec: TorchvisionName, root: Path, keywords: dict, error: Exception) -> Exception:
    """A missing data set (``DataNotFoundError``) or one torchvision cannot read (``DamagedDataError``)."""
    text = str(error)
    where = f"torchvision.datasets.{spec.class_name}"
    if "download" in keywords:
        fetch = "or run once with benchmark.download=true on a machine with internet access"
    else:
        fetch = f"({where} does not download: get the files as its documentation says)"
    if keywords.get("download"):
        return DataNotFoundError(
            f"{where} found no data set under {root}/ and the download failed ({text}): set "
            f"benchmark.root to the folder that holds its files, or download on a machine with internet access."
        )
    if isinstance(error, FileNotFoundError) or "not found" in text.lower() or "download=True" in text:
        return DataNotFoundError(
            f"{where} found no data set under {root}/ ({text}). Set benchmark.root to the "
            f"folder that holds its files in torchvision's layout (see {where}'s documentation), {fetch}."
        )
    return DamagedDataError(
        root,
        f"present, but {where} cannot read it ({type(error).__name__}: {text})",
        fix=f"a file of the data set there is missing or damaged: replace it with an official copy, {fetch}",
    )


def _first_image(dataset: Any, spec: TorchvisionName, root: Path) -> Any:
    if len(dataset) == 0:
        raise DamagedDataError(root, f"{spec.name}: torchvision finds no training images there")
    try:
        return dataset[0][0]
    except Exception as error:
        raise DamagedDataError(
            root, f"{spec.name}: the first training image cannot be read ({type(error).__name__}: {error})"
        ) from error


def _mode_of(first: Any, spec: TorchvisionName) -> str:
    """``L`` or ``RGB``: ``spec.channels``, else the first training image's (grey stays grey)."""
    if spec.channels is not None:
        return "L" if spec.channels == 1 else "RGB"
    grey = ("1", "L", "LA", "I", "I;16", "F")
    if hasattr(first, "mode"):
        return "L" if first.mode in grey else "RGB"
    channels = torch.as_tensor(first).shape[0] if torch.as_tensor(first).dim() == 3 else 1
    return "L" if channels == 1 else "RGB"


# Where torchvision data sets keep their labels: a list per sample, or (path, label) pairs.
_LABEL_LISTS = ("targets", "labels", "_labels", "y")
_SAMPLE_LISTS = ("_samples", "samples", "imgs", "_image_files_and_labels")


def _labels(dataset: Any, name: str) -> Tensor:
    """Every label of ``dataset`` as int64, from its label attribute when it has one (no image is
    read), else by reading each sample."""
    count = len(dataset)
    for attribute in _LABEL_LISTS:
        labels = getattr(dataset, attribute, None)
        if labels is not None and not isinstance(labels, str):
            try:
                labels = torch.as_tensor(labels).long().reshape(-1)
            except (TypeError, ValueError, RuntimeError):
                continue
            if len(labels) == count:
                return labels
    for attribute in _SAMPLE_LISTS:
        samples = getattr(dataset, attribute, None)
        if isinstance(samples, Sequence) and len(samples) == count and count:
            if isinstance(samples[0], tuple) and len(samples[0]) == 2 and isinstance(samples[0][1], int):
                return torch.tensor([label for _, label in samples], dtype=torch.long)
    log.info("%s: no label list found; reading every sample once for its label", name)
    return torch.tensor([int(dataset[index][1]) for index in range(count)], dtype=torch.long)


# ---- from an opened data set to ImageData: in memory within the budget, streamed beyond ---------------
def image_data(
    opened: Opened,
    memory_budget_gb: float,
    *,
    name: str | None = None,
    num_classes: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    class_names: tuple[str, ...] | None = None,
) -> ImageData:
    """``opened`` as ``ImageData``: read into memory when its uint8 images fit ``memory_budget_gb``
    (GB of 10^9 bytes), else ``StreamedImages``. ``mean``/``std`` not given are measured on the
    training images; the other keywords override what was read from the data (a named source)."""
    budget = memory_budget_gb * 1e9
    streamed = opened.nbytes > budget
    if streamed:
        log.info(
            "%s: %.1f MB of uint8 images exceed benchmark.memory_budget_gb=%g: streamed from disk by "
            "DataLoader workers",
            opened.name,
            opened.nbytes / 1e6,
            memory_budget_gb,
        )
        train_images, test_images = StreamedImages(opened.train), StreamedImages(opened.test)
    else:
        train_images, test_images = _read_all(opened, opened.train), _read_all(opened, opened.test)
    if mean is None or std is None:
        if streamed:
            sample = (
                torch.arange(min(len(train_images), STATS_SAMPLE))
                * len(train_images)
                // min(len(train_images), STATS_SAMPLE)
            )
            pixels = train_images[sample].read(num_workers=_workers(len(sample)))
        else:
            pixels = train_images
        mean, std = channel_statistics(pixels)
    return ImageData(
        name or opened.name,
        train_images,
        opened.train_labels,
        test_images,
        opened.test_labels,
        num_classes if num_classes is not None else opened.num_classes,
        tuple(mean),
        tuple(std),
        class_names if class_names is not None else opened.class_names,
    )


def _workers(count: int) -> int:
    return 0 if count < WORKERS_FROM else default_workers()


def _read_all(opened: Opened, reader: SampleReader) -> Tensor:
    """Every image of one split into one uint8 tensor; an image that cannot be read is a
    ``DamagedDataError`` naming the data set's folder (a worker's error is re-raised by torch as text)."""
    try:
        return StreamedImages(reader).read(num_workers=_workers(len(reader)))
    except (OSError, ValueError, RuntimeError) as error:
        problem = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise DamagedDataError(opened.root, f"{opened.name}: an image cannot be read ({problem})") from error


def channel_statistics(images: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 ``[N, C, H, W]`` over every
    pixel, in [0, 1] units: the convention of the published statistics (e.g. MNIST's 0.1307/0.3081)."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].double().div_(255.0).transpose(0, 1).reshape(channels, -1)
        total += part.sum(1)
        squares += part.square().sum(1)
    count = len(images) * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


# ---- the entry of a torchvision:<ClassName> name ----------------------------------------------------
@functools.lru_cache(maxsize=8)
def torchvision_entry(name: str, root: str, download: bool = False) -> DataSource:
    """The registry-like entry of ``name`` (``torchvision:<ClassName>[/...]``) for the data under
    ``root``: its class count and image shape read from the opened data set, its loaders bound to
    it. Cached per (name, root, download): resolving a name again opens nothing."""
    opened = open_torchvision(parse_name(name), root, download)

    def load_within(root_: str | None, download_: bool, memory_budget_gb: float) -> ImageData:
        return image_data(opened, memory_budget_gb)

    def load(root_: str | None, download_: bool) -> ImageData:
        return load_within(root_, download_, DEFAULT_MEMORY_BUDGET_GB)

    return DataSource(name, opened.num_classes, opened.image_shape, load, load_within=load_within)


# ---- GTSRB -------------------------------------------------------------------------------------------
# torchvision's GTSRB (split=train/test), every image resized to 32x32 RGB (the usual size for GTSRB
# benchmarks; the official images are 15x15 to 250x250, each a sign with a ~10% margin).
GTSRB = TorchvisionName("gtsrb", "GTSRB", size=(32, 32), channels=3)
GTSRB_FILES = ("gtsrb/GTSRB/Training", "gtsrb/GTSRB/Final_Test/Images", "gtsrb/GT-final_test.csv")
# The training set's statistics at 32x32, as published (trojanvision's GTSRB: norm_par).
GTSRB_MEAN, GTSRB_STD = (0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669)
# The class names of OpenAI CLIP's zero-shot prompts for GTSRB (openai/CLIP, data/prompts.md), in ClassId order.
GTSRB_NAMES = (
    "red and white circle 20 kph speed limit",
    "red and white circle 30 kph speed limit",
    "red and white circle 50 kph speed limit",
    "red and white circle 60 kph speed limit",
    "red and white circle 70 kph speed limit",
    "red and white circle 80 kph speed limit",
    "end / de-restriction of 80 kph speed limit",
    "red and white circle 100 kph speed limit",
    "red and white circle 120 kph speed limit",
    "red and white circle red car and black car no passing",
    "red and white circle red truck and black car no passing",
    "red and white triangle road intersection warning",
    "white and yellow diamond priority road",
    "red and white upside down triangle yield right-of-way",
    "stop",
    "empty red and white circle",
    "red and white circle no truck entry",
    "red circle with white horizonal stripe no entry",
    "red and white triangle with exclamation mark warning",
    "red and white triangle with black left curve approaching warning",
    "red and white triangle with black right curve approaching warning",
    "red and white triangle with black double curve approaching warning",
    "red and white triangle rough / bumpy road warning",
    "red and white triangle car skidding / slipping warning",
    "red and white triangle with merging / narrow lanes warning",
    "red and white triangle with person digging / construction / road work warning",
    "red and white triangle with traffic light approaching warning",
    "red and white triangle with person walking warning",
    "red and white triangle with child and person walking warning",
    "red and white triangle with bicyle warning",
    "red and white triangle with snowflake / ice warning",
    "red and white triangle with deer warning",
    "white circle with gray strike bar no speed limit",
    "blue circle with white right turn arrow mandatory",
    "blue circle with white left turn arrow mandatory",
    "blue circle with white forward arrow mandatory",
    "blue circle with white forward or right turn arrow mandatory",
    "blue circle with white forward or left turn arrow mandatory",
    "blue circle with white keep right arrow mandatory",
    "blue circle with white keep left arrow mandatory",
    "blue circle with white arrows indicating a traffic circle",
    "white circle with gray strike bar indicating no passing for cars has ended",
    "white circle with gray strike bar indicating no passing for trucks has ended",
)


def load_gtsrb(
    root: str | Path, download: bool = False, memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB
) -> ImageData:
    """GTSRB from ``<root>/gtsrb/`` (torchvision's layout: ``GTSRB/Training/<class>/*.ppm``,
    ``GTSRB/Final_Test/Images/*.ppm`` and ``GT-final_test.csv``), read by torchvision, resized to
    32x32 RGB; 43 classes (ClassId). Missing folders or files raise ``DataNotFoundError`` naming them.
    """
    root = Path(root).expanduser()
    missing = [path for path in GTSRB_FILES if not (root / path).exists()]
    if missing and not download:
        raise DataNotFoundError(
            f"GTSRB not found in {root}/ (missing {', '.join(missing)}: torchvision's layout of the "
            f"official archives GTSRB-Training_fixed.zip, GTSRB_Final_Test_Images.zip and "
            f"GTSRB_Final_Test_GT.zip). Set benchmark.root to the folder that holds gtsrb/, or run once "
            f"with benchmark.download=true on a machine with internet access."
        )
    opened = open_torchvision(GTSRB, root, download)
    for split, labels in (("train", opened.train_labels), ("test", opened.test_labels)):
        check_labels(f"{root / 'gtsrb'} ({split} labels)", labels, len(GTSRB_NAMES))
    return image_data(
        opened,
        memory_budget_gb,
        num_classes=len(GTSRB_NAMES),
        mean=GTSRB_MEAN,
        std=GTSRB_STD,
        class_names=GTSRB_NAMES,
    )
