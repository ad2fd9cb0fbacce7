"""Base data sets as one in-memory uint8 tensor ``[N, C, H, W]`` per split.

torchvision reads the official files; scikit-learn's 8x8 digits ship with the package and are
always available offline. Missing files raise ``DataNotFoundError`` naming what was looked for.
"""

from __future__ import annotations

import functools
import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from clcore.benchmarks.errors import DataNotFoundError


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
        # Batches are normalised in place on their float copy, and stored as 1 byte a pixel:
        # a source with other images must convert them, or say so here rather than mid-run.
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(
                    f"{self.name}: {split} images must be a uint8 tensor [N, C, H, W] (0..255), "
                    f"got {images.dtype} {tuple(images.shape)}"
                )
            if len(labels) != len(images):
                raise ValueError(f"{self.name}: {len(images)} {split} images but {len(labels)} labels")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])


# The digit classes by their numerals, as the task-arithmetic prompts use them ('a photo of the number: "3".').
DIGIT_NAMES = tuple(str(digit) for digit in range(10))

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _gunzip_missing(raw_folder: Path) -> None:
    """torchvision's MNIST reads the uncompressed files; unpack ``.gz`` copies placed by hand."""
    for name in MNIST_FILES:
        packed, unpacked = raw_folder / f"{name}.gz", raw_folder / name
        if packed.is_file() and not unpacked.is_file():
            with gzip.open(packed, "rb") as src, open(unpacked, "wb") as dst:
                shutil.copyfileobj(src, dst)


def load_mnist(root: str | Path, download: bool = False) -> ImageData:
    """MNIST from ``<root>/MNIST/raw/`` (torchvision's layout; ``.gz`` files are fine)."""
    from torchvision.datasets import MNIST

    raw_folder = Path(root).expanduser() / "MNIST" / "raw"
    if raw_folder.is_dir():
        _gunzip_missing(raw_folder)
    try:
        train = MNIST(str(Path(root).expanduser()), train=True, download=download)
        test = MNIST(str(Path(root).expanduser()), train=False, download=download)
    except Exception as error:  # torchvision raises RuntimeError (missing) or URLError (offline)
        raise DataNotFoundError(
            f"MNIST not found in {raw_folder}/ (looked for {', '.join(MNIST_FILES)}, optionally .gz). "
            f"Set benchmark.root to the folder that holds MNIST/raw/, or run once with "
            f"benchmark.download=true on a machine with internet access. ({error})"
        ) from error
    return ImageData(
        name="mnist",
        train_images=train.data.unsqueeze(1).contiguous(),
        train_labels=train.targets.long(),
        test_images=test.data.unsqueeze(1).contiguous(),
        test_labels=test.targets.long(),
        num_classes=10,
        mean=(0.1307,),
        std=(0.3081,),
        class_names=DIGIT_NAMES,
    )


_CIFAR = {
    # name: (torchvision class, folder, classes, mean, std)
    "cifar10": ("CIFAR10", "cifar-10-batches-py", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", "cifar-100-python", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def load_cifar(name: str, root: str | Path, download: bool = False) -> ImageData:
    """CIFAR-10 / CIFAR-100 from ``<root>/cifar-10-batches-py`` or ``<root>/cifar-100-python``."""
    import torchvision.datasets

    class_name, folder, num_classes, mean, std = _CIFAR[name]
    dataset_cls = getattr(torchvision.datasets, class_name)
    root = Path(root).expanduser()
    try:
        train = dataset_cls(str(root), train=True, download=download)
        test = dataset_cls(str(root), train=False, download=download)
    except Exception as error:
        raise DataNotFoundError(
            f"{class_name} not found in {root / folder}/ (the official python-pickle batches). "
            f"Set benchmark.root to the folder that holds {folder}/, or run once with "
            f"benchmark.download=true on a machine with internet access. ({error})"
        ) from error

    def to_tensor(split) -> tuple[Tensor, Tensor]:
        images = torch.from_numpy(np.asarray(split.data)).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(split.targets, dtype=torch.long)

    train_images, train_labels = to_tensor(train)
    test_images, test_labels = to_tensor(test)
    class_names = tuple(
        name.replace("_", " ") for name in train.classes
    )  # "aquarium_fish" -> "aquarium fish"
    return ImageData(
        name, train_images, train_labels, test_images, test_labels, num_classes, mean, std, class_names
    )


def load_digits(test_fraction: float = 0.2) -> ImageData:
    """scikit-learn's 8x8 handwritten digits (1797 images, values 0..16) as uint8 0..255.

    The train/test split is fixed (stratified, ``random_state=0``) so that the test set is the
    same for every run seed, like an official split.
    """
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


@functools.lru_cache(maxsize=4)
def load_source(source: str, root: str | None = None, download: bool = False) -> ImageData:
    """Dispatch by name: ``digits``, ``mnist``, ``cifar10``, ``cifar100``.

    Cached per process: a sweep or a test session reads each data set once. Callers never
    modify the returned tensors (benchmarks index them, which copies).
    """
    if source == "digits":
        return load_digits()
    if root is None:
        raise ValueError(f"benchmark.root must be set for source '{source}'")
    if source == "mnist":
        return load_mnist(root, download)
    if source in _CIFAR:
        return load_cifar(source, root, download)
    raise ValueError(f"unknown data source '{source}': choose digits, mnist, cifar10 or cifar100")
