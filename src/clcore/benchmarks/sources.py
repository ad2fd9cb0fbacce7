"""Base data sets, one registry entry each: what they hold, known before loading, and how to load them.

A ``DataSource`` entry states a data set's class count and image shape (so a benchmark and
``clrun``'s pre-flight check can judge a configuration without reading any file), whether it needs
``benchmark.root``, and its loader. ``load_source`` loads a registered source as one in-memory
uint8 tensor ``[N, C, H, W]`` per split (``ImageData``). Adding a torchvision data set is one
``register_source`` entry at the end of this file (``torchvision_source`` builds it for data sets
with ``train=True/False`` splits) plus the benchmark YAML files that use it; nothing else reads a
list of sources.

Any other torchvision classification data set is named without an entry:
``torchvision:<ClassName>`` (options after it: ``torchvision:Flowers102/size:64``; see
``clcore.benchmarks.torchvision_sources``). Its entry is built from its data at ``benchmark.root``
when the name is first resolved (``resolve_source``): the class count and image shape are read
from the data, since torchvision states neither before loading.

clcore reads the idx files of the MNIST family (MNIST, Fashion-MNIST, KMNIST, EMNIST), the CIFAR
python pickles and SVHN's ``.mat`` files itself (``clcore.benchmarks.readers``; torchvision only
downloads them); other torchvision data sets (GTSRB, ``torchvision:<ClassName>``) are read by
torchvision, image by image, and held in memory when their uint8 images fit
``benchmark.memory_budget_gb``, streamed from disk by DataLoader workers otherwise
(``clcore.benchmarks.streamed``). scikit-learn's 8x8 digits ship with the package and are always
available offline. Missing files raise ``DataNotFoundError`` naming what was looked for; a file that
is present but damaged raises ``DamagedDataError`` naming it and what is wrong with it. Reading
never writes into the data folder.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pickle
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clcore.benchmarks.errors import REPLACE_FILE, DamagedDataError, DataNotFoundError
from clcore.benchmarks.readers import (
    check_labels,
    check_same_count,
    read_cifar_batch,
    read_cifar_names,
    read_idx,
    read_svhn_mat,
)
from clcore.utils.atomic import torch_save_atomic
from clcore.utils.safe_load import load_tensors_safely


@dataclass
class ImageData:
    """A base data set: uint8 images, int64 labels, the per-channel normalisation, class names.

    ``class_names[c]`` names class id ``c`` in words a text encoder can read (zero-shot heads).
    """

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Refuse data no benchmark can use (``DamagedDataError``, whichever source loaded it): images
        that are not uint8 ``[N, C, H, W]``, an empty split, a label count unlike the image count,
        labels outside ``0..num_classes-1``, train and test images of different shapes."""
        # Batches are normalised in place on their float copy, and stored as 1 byte a pixel:
        # a source with other images must convert them, or say so here rather than mid-run.
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise DamagedDataError(
                    self.name,
                    f"{split} images must be a uint8 tensor [N, C, H, W] (0..255), "
                    f"got {images.dtype} {tuple(images.shape)}",
                    fix="convert them in the source's loader",
                )
            if len(labels) != len(images):
                raise DamagedDataError(
                    self.name, f"{len(images)} {split} images but {len(labels)} labels", fix=CHECK_FILES
                )
            if len(images) == 0:
                raise DamagedDataError(self.name, f"the {split} split holds no images", fix=CHECK_FILES)
            check_labels(f"{self.name} ({split} labels)", labels, self.num_classes)
        # A model built for the training images must take the test images as they are.
        train_shape, test_shape = tuple(self.train_images.shape[1:]), tuple(self.test_images.shape[1:])
        if train_shape != test_shape:
            raise DamagedDataError(
                self.name,
                f"train images are {_shape(train_shape)} but test images are {_shape(test_shape)} "
                f"(channels x height x width)",
                fix=CHECK_FILES,
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])


# What to do about a data set whose files disagree (each file read, but not one data set together).
CHECK_FILES = "the data set's files do not belong together: replace them with one official copy"


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


# (root, download) -> the data set; root is None only for a source that needs none.
Loader = Callable[[str | None, bool], ImageData]
# (root, download, memory budget in GB) -> the data set, in memory if it fits the budget, else streamed.
BudgetedLoader = Callable[[str | None, bool, float], ImageData]

# ``benchmark.memory_budget_gb``'s default: the uint8 images a source read image by image may hold in
# memory (1 GB = 10^9 bytes); beyond it they are streamed from disk.
DEFAULT_MEMORY_BUDGET_GB = 8.0

# A source named by its torchvision class: ``torchvision:<ClassName>[/<key>:<value>...]``.
TORCHVISION_PREFIX = "torchvision:"


@dataclass(frozen=True)
class DataSource:
    """One base data set: its class count and image shape ``(C, H, W)``, known without loading it.

    ``needs_root``: the files live under ``benchmark.root`` (false for data shipped with a package).
    ``load(root, download)`` returns the ``ImageData``; ``load_source`` checks it against
    ``num_classes`` and ``image_shape``, so the rules judged from the entry hold for the data.
    ``load_within(root, download, memory_budget_gb)``, where given, is used instead: a source read
    image by image holds its images in memory when they fit the budget and streams them otherwise.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    load: Loader
    needs_root: bool = True
    load_within: BudgetedLoader | None = None


# name -> entry; filled by ``register_source`` (the built-in sources at the end of this file).
SOURCES: dict[str, DataSource] = {}


def register_source(source: DataSource) -> DataSource:
    """Add ``source`` to the registry under its name; a different entry of the same name is refused."""
    registered = SOURCES.get(source.name)
    if registered is not None and registered != source:
        raise ValueError(f"a data source named {source.name!r} is registered already: choose another name")
    SOURCES[source.name] = source
    return source


def source_named(name: str) -> DataSource:
    """The registered source ``name``; ``ValueError`` listing the known ones otherwise."""
    if name not in SOURCES:
        raise ValueError(f"unknown data source {name!r}: choose one of {', '.join(SOURCES)}")
    return SOURCES[name]


def resolve_source(name: str, root: str | None = None, download: bool = False) -> DataSource:
    """The entry of ``name``: a registered source, or ``torchvision:<ClassName>[/<key>:<value>...]``
    built from its data under ``root`` (``torchvision_sources.torchvision_entry``, cached per name
    and root).

    Raises ``ValueError`` for an unknown name, a malformed or unknown torchvision name, or a
    torchvision name without ``root``; ``DataNotFoundError`` / ``DamagedDataError`` when the data
    of a torchvision name is missing or unreadable.
    """
    if name in SOURCES or not name.startswith(TORCHVISION_PREFIX):
        return source_named(name)
    if root is None:
        raise ValueError(f"benchmark.root is not set: source {name!r} needs the folder that holds its files")
    from clcore.benchmarks.torchvision_sources import torchvision_entry

    return torchvision_entry(name, str(root), bool(download))


def entry_or_problem(options: Mapping[str, Any]) -> tuple[DataSource | None, str | None]:
    """The entry of ``options["source"]`` (``resolve_source`` with its ``root`` and ``download``), or
    None and the problem with it, worded as a config problem with its fix."""
    source = options.get("source")
    if isinstance(source, str):
        try:
            return resolve_source(source, options.get("root"), bool(options.get("download", False))), None
        except (DataNotFoundError, ValueError) as error:  # DamagedDataError is a ValueError
            if source.startswith(TORCHVISION_PREFIX):
                text = str(error)
                return None, text if text.startswith("benchmark.") else f"benchmark.source={source!r}: {text}"
    return None, (
        f"benchmark.source={source!r} is unknown: choose one of {', '.join(SOURCES)} "
        f"(or name any torchvision data set, {TORCHVISION_PREFIX}<ClassName>, or add one with "
        f"clcore.benchmarks.sources.register_source)"
    )


def load_source(
    source: str,
    root: str | None = None,
    download: bool = False,
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB,
) -> ImageData:
    """The data of the source ``source`` (registered, or ``torchvision:<ClassName>``), from ``root``
    (torchvision's layout).

    ``memory_budget_gb`` concerns the sources read image by image (``DataSource.load_within``):
    their images are held in memory when they fit it, streamed from disk otherwise; the others are
    always held in memory.

    Cached per process: a sweep, a test session, or the pre-flight check and the run after it
    read each data set once. Callers never modify the returned tensors (benchmarks index them,
    which copies).
    """
    entry = resolve_source(source, None if root is None else str(root), download)
    if entry.needs_root and root is None:
        raise ValueError(f"benchmark.root must be set for source '{source}'")
    budget = float(memory_budget_gb) if entry.load_within is not None else None
    return _load(entry, None if root is None else str(root), download, budget)


@functools.lru_cache(maxsize=8)  # five_datasets holds 5 sources
def _load(entry: DataSource, root: str | None, download: bool, budget: float | None = None) -> ImageData:
    data = entry.load(root, download) if budget is None else entry.load_within(root, download, budget)
    if data.num_classes != entry.num_classes or data.image_shape != entry.image_shape:
        raise ValueError(
            f"data source {entry.name!r} is registered with {entry.num_classes} classes of shape "
            f"{entry.image_shape}, but its loader returned {data.num_classes} classes of shape "
            f"{data.image_shape}: correct its register_source entry"
        )
    return data


# ---- the loaders ----------------------------------------------------------------------------------
# The digit classes by their numerals, as the task-arithmetic prompts use them ('a photo of the number: "3".').
DIGIT_NAMES = tuple(str(digit) for digit in range(10))

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class IdxFiles:
    """A data set of the MNIST family: 28x28 grey images in idx files (each plain or ``.gz``) under
    ``<root>/<folder>/raw/``, torchvision's layout.

    ``title`` names it in messages; ``files`` are the train images, train labels, test images and
    test labels files; ``dataset_class`` (with ``download_options``) is the ``torchvision.datasets``
    class that downloads them. ``transpose``: the files store each image transposed (EMNIST), so
    it is transposed back, upright like MNIST's. ``first_label``: the files number the classes from
    it (EMNIST letters: 1..26), and the labels are shifted to start at 0.
    """

    title: str
    folder: str
    files: tuple[str, str, str, str] = MNIST_FILES
    dataset_class: str = "MNIST"
    download_options: tuple[tuple[str, str], ...] = ()
    transpose: bool = False
    first_label: int = 0


MNIST_IDX = IdxFiles("MNIST", "MNIST")
FASHION_MNIST_IDX = IdxFiles("Fashion-MNIST", "FashionMNIST", dataset_class="FashionMNIST")
KMNIST_IDX = IdxFiles("KMNIST", "KMNIST", dataset_class="KMNIST")


def emnist_idx(split: str, first_label: int = 0) -> IdxFiles:
    """EMNIST's ``split`` (``balanced``, ``letters``, ...): ``EMNIST/raw/emnist-<split>-{train,test}-...``,
    as torchvision's ``EMNIST(split=...)`` downloads and unpacks them. The images are stored
    transposed (pytorch/vision#8783; torchvision leaves them so): clcore transposes them upright.
    """
    files = tuple(
        f"emnist-{split}-{part}-{kind}-ubyte"
        for part in ("train", "test")
        for kind in ("images-idx3", "labels-idx1")
    )
    return IdxFiles(
        f"EMNIST ({split})",
        "EMNIST",
        files,
        dataset_class="EMNIST",
        download_options=(("split", split),),
        transpose=True,
        first_label=first_label,
    )


def _mnist_file(raw_folder: Path, name: str) -> Path | None:
    """``raw_folder/name``, else ``raw_folder/name.gz``, else None."""
    for path in (raw_folder / name, raw_folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _read_mnist_file(raw_folder: Path, name: str, ndim: int, what: str) -> tuple[Path, Tensor]:
    """One MNIST file, read and checked (``read_idx``); a damaged plain file with a ``.gz`` beside it
    says that deleting it makes the ``.gz`` the one read."""
    path = _mnist_file(raw_folder, name)
    try:
        return path, read_idx(path, ndim, what)
    except DamagedDataError as error:
        packed = raw_folder / f"{name}.gz"
        if path.suffix == ".gz" or not packed.is_file():
            raise
        raise DamagedDataError(
            path, error.problem, fix=f"delete it: {packed.name} beside it is read instead"
        ) from None


def load_mnist(root: str | Path, download: bool = False) -> ImageData:
    """MNIST from ``<root>/MNIST/raw/`` (torchvision's layout; each file plain or ``.gz``).

    The four idx files are read by clcore (``readers.read_idx``, a ``.gz`` unpacked in memory):
    missing files raise ``DataNotFoundError``; a damaged file, images and labels files of
    different counts, images of a shape other than 28x28, or labels outside 0..9 raise
    ``DamagedDataError`` naming the file. ``download=True`` fetches missing files with torchvision.
    """
    return load_idx("mnist", MNIST_IDX, 10, (0.1307,), (0.3081,), DIGIT_NAMES, root=root, download=download)


def load_idx(
    name: str,
    files: IdxFiles,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    class_names: tuple[str, ...],
    root: str | Path,
    download: bool = False,
) -> ImageData:
    """A data set of the MNIST family from ``<root>/<files.folder>/raw/`` (``IdxFiles``), read by clcore
    like MNIST (``load_mnist``): missing files raise ``DataNotFoundError`` naming them; a damaged
    file, images and labels files of different counts, images other than 28x28 or labels outside
    the class count raise ``DamagedDataError`` naming the file.
    """
    root = Path(root).expanduser()
    raw_folder = root / files.folder / "raw"
    if download and not all(_mnist_file(raw_folder, file) for file in files.files):
        splits = tuple({"train": train, **dict(files.download_options)} for train in (True, False))
        _download(files.dataset_class, root, files.folder, files.files, splits)
    missing = [file for file in files.files if _mnist_file(raw_folder, file) is None]
    if missing:
        raise DataNotFoundError(
            f"{files.title} not found in {raw_folder}/ (missing {', '.join(missing)}, each plain or .gz). "
            f"Set benchmark.root to the folder that holds {files.folder}/raw/, or run once with "
            f"benchmark.download=true on a machine with internet access."
        )
    splits = {}
    train_images_file, train_labels_file, test_images_file, test_labels_file = files.files
    for split, images_file, labels_file in (
        ("train", train_images_file, train_labels_file),
        ("test", test_images_file, test_labels_file),
    ):
        images_path, images = _read_mnist_file(raw_folder, images_file, 3, "images")
        labels_path, labels = _read_mnist_file(raw_folder, labels_file, 1, "labels")
        check_same_count(images_path, images, labels_path, labels)
        check_labels(labels_path, labels, num_classes, first=files.first_label)
        splits[split] = (images_path, images.unsqueeze(1), labels.long() - files.first_label)
    (train_path, train_images, train_labels), (test_path, test_images, test_labels) = splits.values()
    for path, images in ((train_path, train_images), (test_path, test_images)):
        if images.shape[2:] != (28, 28):
            raise DamagedDataError(
                path, f"holds images of {_shape(images.shape[2:])}, {files.title}'s are 28x28"
            )
    if files.transpose:
        train_images = train_images.transpose(2, 3).contiguous()
        test_images = test_images.transpose(2, 3).contiguous()
    return ImageData(
        name=name,
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=num_classes,
        mean=mean,
        std=std,
        class_names=class_names,
    )


def idx_source(
    name: str,
    files: IdxFiles,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    class_names: tuple[str, ...],
) -> DataSource:
    """The entry of a data set of the MNIST family read by clcore (``load_idx``)."""
    return DataSource(
        name,
        num_classes,
        (1, 28, 28),
        functools.partial(load_idx, name, files, num_classes, mean, std, class_names),
    )


SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")


def load_svhn(root: str | Path, download: bool = False) -> ImageData:
    """SVHN's cropped digits from ``<root>/train_32x32.mat`` and ``<root>/test_32x32.mat`` (where
    torchvision's ``SVHN`` keeps them; the ``extra`` split is not used), read by clcore
    (``readers.read_svhn_mat``). Labels 0..9 (the files' 10, digit 0, becomes 0).
    """
    root = Path(root).expanduser()
    if download and not all((root / file).is_file() for file in SVHN_FILES):
        _download("SVHN", root, "", SVHN_FILES, ({"split": "train"}, {"split": "test"}))
    missing = [file for file in SVHN_FILES if not (root / file).is_file()]
    if missing:
        raise DataNotFoundError(
            f"SVHN not found in {root}/ (missing {', '.join(missing)}: the official cropped-digit "
            f"MATLAB files). Set benchmark.root to the folder that holds {' and '.join(SVHN_FILES)}, "
            f"or run once with benchmark.download=true on a machine with internet access."
        )
    train_images, train_labels = read_svhn_mat(root / SVHN_FILES[0])
    test_images, test_labels = read_svhn_mat(root / SVHN_FILES[1])
    return ImageData(
        name="svhn",
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=10,
        # The training set's per-channel statistics as published (e.g. PatrickZH/DeepCore's SVHN
        # loader; 0.4376821, 0.4437697, 0.4728044 / 0.19803012, 0.20101562, 0.19703614 to 8 digits).
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        class_names=DIGIT_NAMES,
    )


def _download(
    dataset_class: str,
    root: Path,
    folder: str,
    files: tuple[str, ...] | str,
    splits: tuple[dict, ...] = ({"train": True}, {"train": False}),
) -> None:
    """Let ``torchvision.datasets.<dataset_class>`` download its files into ``root``: one call per
    entry of ``splits`` (its split keywords: ``train=True``, ``split="test"``, ...).

    A failure (offline, a server error) is a ``DataNotFoundError``: the files are still missing.
    """
    import torchvision.datasets

    dataset_cls = getattr(torchvision.datasets, dataset_class)
    try:
        for split in splits:
            dataset_cls(str(root), download=True, **split)
    except Exception as error:  # torchvision raises RuntimeError (missing) or URLError (offline)
        listed = ", ".join(files) if isinstance(files, tuple) else files
        holds = f"{folder}/" if folder else "them"
        raise DataNotFoundError(
            f"{dataset_class} not found in {root / folder}/ ({listed}) and the download failed: "
            f"set benchmark.root to the folder that holds {holds}, or download on a machine "
            f"with internet access. ({error})"
        ) from error


def torchvision_source(
    name: str,
    dataset_class: str,
    folder: str,
    num_classes: int,
    image_shape: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    files: str = "the official files",
) -> DataSource:
    """The entry of a ``torchvision.datasets`` class with ``train=True/False`` splits.

    ``folder`` (under ``benchmark.root``) and ``files`` say where the data is looked for, in the
    message of a missing data set; ``mean`` / ``std`` are the training set's per-channel statistics.
    """
    return DataSource(
        name,
        num_classes,
        image_shape,
        functools.partial(_load_torchvision, name, dataset_class, folder, files, num_classes, mean, std),
    )


def _load_torchvision(
    name: str,
    dataset_class: str,
    folder: str,
    files: str,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    root: str,
    download: bool = False,
) -> ImageData:
    import torchvision.datasets

    dataset_cls = getattr(torchvision.datasets, dataset_class)
    root = Path(root).expanduser()
    try:
        train = dataset_cls(str(root), train=True, download=download)
        test = dataset_cls(str(root), train=False, download=download)
    except Exception as error:  # torchvision raises RuntimeError (missing) or URLError (offline)
        if (root / folder).is_dir() and any((root / folder).iterdir()):
            # torchvision cannot tell a missing file from a damaged one; clcore's own readers can.
            raise DamagedDataError(
                root / folder,
                f"present, but torchvision.datasets.{dataset_class} cannot read it ({error})",
                fix=f"a file of {files} in it is missing or damaged: {REPLACE_FILE}",
            ) from error
        raise DataNotFoundError(
            f"{dataset_class} not found in {root / folder}/ ({files}). "
            f"Set benchmark.root to the folder that holds {folder}/, or run once with "
            f"benchmark.download=true on a machine with internet access. ({error})"
        ) from error

    def to_tensor(split) -> tuple[Tensor, Tensor]:
        images = torch.as_tensor(np.asarray(split.data))
        # [N, H, W] grey or [N, H, W, C] colour -> [N, C, H, W]
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
        return images.contiguous(), torch.as_tensor(split.targets, dtype=torch.long)

    train_images, train_labels = to_tensor(train)
    test_images, test_labels = to_tensor(test)
    # "aquarium_fish" -> "aquarium fish"
    class_names = tuple(class_name.replace("_", " ") for class_name in train.classes)
    return ImageData(
        name, train_images, train_labels, test_images, test_labels, num_classes, mean, std, class_names
    )


@dataclass(frozen=True)
class CifarFiles:
    """Where a CIFAR data set's python pickles lie, and the keys of its labels and class names.

    ``dataset_class``: the ``torchvision.datasets`` class that downloads them.
    """

    dataset_class: str
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str


CIFAR10_FILES = CifarFiles(
    "CIFAR10",
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    "batches.meta",
    "labels",
    "label_names",
)
CIFAR100_FILES = CifarFiles(
    "CIFAR100", "cifar-100-python", ("train",), ("test",), "meta", "fine_labels", "fine_label_names"
)


def cifar_source(
    name: str, files: CifarFiles, num_classes: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> DataSource:
    """The entry of a CIFAR data set read from its official python pickles by clcore (``_load_cifar``)."""
    return DataSource(
        name, num_classes, (3, 32, 32), functools.partial(_load_cifar, name, files, num_classes, mean, std)
    )


def _load_cifar(
    name: str,
    files: CifarFiles,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    root: str,
    download: bool = False,
) -> ImageData:
    """CIFAR-10/100 from ``<root>/<files.folder>/`` (torchvision's layout), read by clcore.

    Missing files raise ``DataNotFoundError``; a damaged batch or meta file (``readers``) raises
    ``DamagedDataError`` naming it. ``download=True`` fetches missing files with torchvision.
    """
    root = Path(root).expanduser()
    folder = root / files.folder
    names = (*files.train, *files.test, files.meta)
    if download and not all((folder / file).is_file() for file in names):
        _download(files.dataset_class, root, files.folder, "the official python-pickle batches")
    missing = [file for file in names if not (folder / file).is_file()]
    if missing:
        raise DataNotFoundError(
            f"{files.dataset_class} not found in {folder}/ (the official python-pickle batches: "
            f"missing {', '.join(missing)}). Set benchmark.root to the folder that holds "
            f"{files.folder}/, or run once with benchmark.download=true on a machine with internet access."
        )

    def read_split(batches: tuple[str, ...]) -> tuple[Tensor, Tensor]:
        parts = [read_cifar_batch(folder / batch, files.label_key, num_classes) for batch in batches]
        return torch.cat([images for images, _ in parts]), torch.cat([labels for _, labels in parts])

    train_images, train_labels = read_split(files.train)
    test_images, test_labels = read_split(files.test)
    class_names = read_cifar_names(folder / files.meta, files.names_key, num_classes)
    # "aquarium_fish" -> "aquarium fish"
    class_names = tuple(class_name.replace("_", " ") for class_name in class_names)
    return ImageData(
        name, train_images, train_labels, test_images, test_labels, num_classes, mean, std, class_names
    )


def load_digits(test_fraction: float = 0.2) -> ImageData:
    """scikit-learn's 8x8 handwritten digits (1797 images, values 0..16) as uint8 0..255.

    The train/test split is fixed (stratified, ``random_state=0``) so that the test set is the
    same for every run seed, like an official split. The prepared tensors are cached
    (``digits_cache_path``): importing scikit-learn costs 0.15-0.25 s, a third of ``clrun``'s
    start-up beyond Lightning's, and the default ``clrun`` needs it on every launch otherwise.
    """
    cache = digits_cache_path(test_fraction)
    if cache is not None:
        try:
            return ImageData(**load_tensors_safely(cache, "digits cache"))
        except (OSError, RuntimeError, TypeError, ValueError, EOFError, pickle.UnpicklingError):
            pass  # absent or damaged: built again below and rewritten
    data = _digits_from_sklearn(test_fraction)
    if cache is not None:
        try:  # atomic: a concurrent run never reads half a file
            torch_save_atomic(cache, dataclasses.asdict(data))
        except OSError:
            pass  # a cache that cannot be written (a read-only home): the data was loaded anyway
    return data


def digits_cache_path(test_fraction: float) -> Path | None:
    """``$CLCORE_CACHE`` (default ``$XDG_CACHE_HOME/clcore`` or ``~/.cache/clcore``)
    ``/digits-scikit-learn-<version>-test<fraction>.pt``; None when scikit-learn is not installed.

    Keyed on scikit-learn's version (its copy of the data and its splitter make the split) and the
    test fraction. ``CLCORE_CACHE=""`` switches the cache off.
    """
    from importlib.metadata import PackageNotFoundError, version

    folder = os.environ.get("CLCORE_CACHE")
    if folder == "":
        return None
    if folder is None:
        folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "clcore")
    try:
        sklearn_version = version("scikit-learn")
    except PackageNotFoundError:
        return None
    return Path(folder) / f"digits-scikit-learn-{sklearn_version}-test{test_fraction}.pt"


def _digits_from_sklearn(test_fraction: float) -> ImageData:
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=test_fraction, random_state=0, stratify=digits.target
    )
    train_images = torch.from_numpy(train_x)
    pixels = train_images.double() / 255.0
    return ImageData(
        name="digits",
        train_images=train_images,
        train_labels=torch.from_numpy(train_y).long(),
        test_images=torch.from_numpy(test_x),
        test_labels=torch.from_numpy(test_y).long(),
        num_classes=10,
        mean=(float(pixels.mean()),),
        std=(float(pixels.std()),),
        class_names=DIGIT_NAMES,
    )


# ---- the built-in sources: one entry each ---------------------------------------------------------
register_source(DataSource("digits", 10, (1, 8, 8), lambda root, download: load_digits(), needs_root=False))
register_source(DataSource("mnist", 10, (1, 28, 28), load_mnist))
register_source(
    cifar_source("cifar10", CIFAR10_FILES, 10, mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))
)
register_source(
    cifar_source("cifar100", CIFAR100_FILES, 100, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))
)

# The MNIST family, read by clcore. Statistics: the training set's, as published and widely used
# (Fashion-MNIST 0.2860/0.3530: computed in chatflip/CalculationMeanStd; KMNIST 0.1918/0.3483 and
# EMNIST balanced 0.1751/0.3332: the values used across public code, matching Lightning Bolts'
# ``emnist_normalization`` (balanced 0.175/0.333, letters 0.172/0.331) to its three digits).
# torchvision's class names; EMNIST balanced's 47: digits, capitals, then the 11 lower-case letters
# not merged with their capital (torchvision's ``EMNIST.classes_split_dict``), letters': a..z.
FASHION_MNIST_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
KMNIST_NAMES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
EMNIST_BALANCED_NAMES = tuple(sorted(set(string.digits + string.ascii_letters) - set("cijklmopsuvwxyz")))
EMNIST_LETTERS_NAMES = tuple(string.ascii_lowercase)
register_source(idx_source("fashion_mnist", FASHION_MNIST_IDX, 10, (0.2860,), (0.3530,), FASHION_MNIST_NAMES))
register_source(idx_source("kmnist", KMNIST_IDX, 10, (0.1918,), (0.3483,), KMNIST_NAMES))
register_source(
    idx_source("emnist_balanced", emnist_idx("balanced"), 47, (0.1751,), (0.3332,), EMNIST_BALANCED_NAMES)
)
# Letters: the files number the 26 classes 1..26 (torchvision keeps an empty class 0, "N/A"); clcore 0..25.
register_source(
    idx_source(
        "emnist_letters", emnist_idx("letters", first_label=1), 26, (0.172,), (0.331,), EMNIST_LETTERS_NAMES
    )
)
register_source(DataSource("svhn", 10, (3, 32, 32), load_svhn))


def _load_gtsrb(
    root: str, download: bool = False, memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB
) -> ImageData:
    from clcore.benchmarks.torchvision_sources import load_gtsrb

    return load_gtsrb(root, download, memory_budget_gb)


# GTSRB: torchvision reads its .ppm files; every image is resized to 32x32 (torchvision_sources.GTSRB).
register_source(DataSource("gtsrb", 43, (3, 32, 32), _load_gtsrb, load_within=_load_gtsrb))

# Image folders decoded with Pillow: TinyImageNet and CUB-200-2011 (clcore.benchmarks.image_folders),
# notMNIST (clcore.benchmarks.notmnist). Imported last: they build on the definitions above.
from clcore.benchmarks.image_folders import register_image_folder_sources  # noqa: E402
from clcore.benchmarks.notmnist import register_notmnist  # noqa: E402

register_image_folder_sources()
register_notmnist()
