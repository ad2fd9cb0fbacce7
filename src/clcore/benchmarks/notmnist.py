"""notMNIST (Bulatov 2011): the letters A-J in many fonts, 28x28 grey, as the source ``notmnist``.

One of ``five_datasets``' tasks (Ebrahimi et al. 2020). The archive (``notMNIST_small``) ships no
train/test split: ``notmnist_is_test`` fixes one from the file names, the same for every run.
Registered with the built-in sources (the end of ``clcore.benchmarks.sources``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from clcore.benchmarks.errors import DamagedDataError, DataNotFoundError
from clcore.benchmarks.sources import DataSource, ImageData, register_source

log = logging.getLogger(__name__)

NOTMNIST_FOLDER = "notMNIST_small"
NOTMNIST_URL = "http://yaroslavvb.com/upload/notMNIST/notMNIST_small.tar.gz"
NOTMNIST_CLASSES = tuple("ABCDEFGHIJ")
# one file in NOTMNIST_TEST_EVERY goes to the test split (~10%: ~1,870 of notMNIST_small's ~18,700)
NOTMNIST_TEST_EVERY = 10
# notMNIST_small holds a couple of files no decoder reads (empty); more than this is a damaged copy
NOTMNIST_MAX_UNREADABLE = 10


def notmnist_is_test(file_name: str) -> bool:
    """Whether the notMNIST image ``file_name`` (``<name>.png``, without its letter folder) is a test image.

    notMNIST ships no split, so one is fixed here, independent of the run seed and of which other
    files are present: the file is a test image when the first 8 bytes of the BLAKE2b digest of its
    name, read as a little-endian integer, are divisible by ``NOTMNIST_TEST_EVERY``. notMNIST's file
    names are the (base64) names of the fonts, the same in every letter folder, so all letters of
    one font fall in the same split: the test fonts are fonts never seen in training.
    """
    key = hashlib.blake2b(file_name.encode(), digest_size=8).digest()
    return int.from_bytes(key, "little") % NOTMNIST_TEST_EVERY == 0


def load_notmnist(root: str | Path, download: bool = False) -> ImageData:
    """notMNIST_small from ``<root>/notMNIST_small/<A..J>/*.png`` (the unpacked archive of ``NOTMNIST_URL``).

    Each PNG is decoded with PIL as 28x28 grey; labels are the letters' positions (A=0 .. J=9); the
    split is ``notmnist_is_test``'s. Files PIL cannot decode are skipped, with a warning naming them,
    up to ``NOTMNIST_MAX_UNREADABLE`` (the official archive has a couple of empty ones); more, or an
    image that is not 28x28, raise ``DamagedDataError``. A missing folder or letter raises
    ``DataNotFoundError`` naming the folder and the URL; ``download=True`` fetches and unpacks the
    archive first (torchvision's downloader). The mean/std are measured on the training images.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root).expanduser()
    folder = root / NOTMNIST_FOLDER

    def missing() -> list[str]:
        return [
            c for c in NOTMNIST_CLASSES if not (folder / c).is_dir() or not any((folder / c).glob("*.png"))
        ]

    if download and missing():
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(NOTMNIST_URL, str(root))
        except Exception as error:  # offline, a server error, a damaged archive
            raise DataNotFoundError(
                f"notMNIST not found in {folder}/ and the download of {NOTMNIST_URL} failed: download it "
                f"on a machine with internet access and unpack it in {root}/. ({error})"
            ) from error
    absent = missing()
    if absent:
        raise DataNotFoundError(
            f"notMNIST not found in {folder}/ (missing the PNG files of letter(s) {', '.join(absent)}). "
            f"Download {NOTMNIST_URL} and unpack it in the folder benchmark.root names "
            f"(tar xzf notMNIST_small.tar.gz gives notMNIST_small/A..J/), or run once with "
            f"benchmark.download=true on a machine with internet access."
        )
    parts = {"train": ([], []), "test": ([], [])}
    unreadable = []
    for label, letter in enumerate(NOTMNIST_CLASSES):
        for path in sorted((folder / letter).glob("*.png")):
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("L"))
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
                unreadable.append(path)
                continue
            if pixels.shape != (28, 28):
                raise DamagedDataError(
                    path, f"is a {pixels.shape[0]}x{pixels.shape[1]} image, notMNIST's are 28x28"
                )
            images, labels = parts["test" if notmnist_is_test(path.name) else "train"]
            images.append(pixels)
            labels.append(label)
    if len(unreadable) > NOTMNIST_MAX_UNREADABLE:
        shown = ", ".join(str(path) for path in unreadable[:5])
        raise DamagedDataError(
            folder,
            f"{len(unreadable)} PNG files cannot be decoded (e.g. {shown})",
            fix=f"unpack a fresh copy of {NOTMNIST_URL} there",
        )
    if unreadable:
        log.warning(
            "notMNIST: skipped %d file(s) that cannot be decoded: %s",
            len(unreadable),
            ", ".join(str(path) for path in unreadable),
        )

    def tensors(split: str) -> tuple[Tensor, Tensor]:
        images, labels = parts[split]
        if not images:
            return torch.empty((0, 1, 28, 28), dtype=torch.uint8), torch.empty(0, dtype=torch.long)
        return torch.from_numpy(np.stack(images))[:, None].contiguous(), torch.tensor(
            labels, dtype=torch.long
        )

    train_images, train_labels = tensors("train")
    test_images, test_labels = tensors("test")
    pixels = train_images.double() / 255.0
    return ImageData(
        name="notmnist",
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=len(NOTMNIST_CLASSES),
        mean=(float(pixels.mean()) if len(pixels) else 0.0,),
        std=(float(pixels.std()) if len(pixels) > 1 else 1.0,),
        class_names=NOTMNIST_CLASSES,
    )


NOTMNIST = DataSource("notmnist", len(NOTMNIST_CLASSES), (1, 28, 28), load_notmnist)


def register_notmnist() -> DataSource:
    """Add notMNIST (``load_notmnist``) to the source registry as ``notmnist``; calling it again is harmless."""
    return register_source(NOTMNIST)
