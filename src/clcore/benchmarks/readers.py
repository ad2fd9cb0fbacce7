"""Readers of the on-disk formats clcore reads itself: the idx files of the MNIST family (MNIST,
Fashion-MNIST, KMNIST, EMNIST; plain or ``.gz``), the CIFAR-10/100 python pickles and SVHN's MATLAB
``.mat`` files.

Every reader checks what it reads and raises ``DamagedDataError`` naming the file and what is wrong
with it (empty, truncated, wrong magic number, header sizes that disagree with the file, not gzip
though named ``.gz``, a pickle or ``.mat`` file without its keys or with arrays of the wrong size,
labels outside the class count). A missing file is the caller's ``DataNotFoundError``, never one of these.

The readers only read: a ``.gz`` file is unpacked in memory, so a failed read leaves the user's
data folder exactly as it was.
"""

from __future__ import annotations

import gzip
import importlib
import io
import math
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clcore.benchmarks.errors import DamagedDataError

GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: Path) -> bytes:
    """The content of ``path``; a ``.gz`` file decompressed in memory.

    Refuses an empty file, a ``.gz`` that is not gzip, a truncated or corrupt gzip stream and one
    that unpacks to nothing.
    """
    data = path.read_bytes()
    if not data:
        raise DamagedDataError(path, "the file is empty (0 bytes)")
    if path.suffix != ".gz":
        return data
    if data[:2] != GZIP_MAGIC:
        raise DamagedDataError(path, f"named .gz but not a gzip file (it starts with {data[:8]!r})")
    try:
        data = gzip.decompress(data)
    except EOFError:
        raise DamagedDataError(path, "the gzip stream ends early: the file is truncated") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise DamagedDataError(path, f"the gzip data is corrupt ({error})") from None
    if not data:
        raise DamagedDataError(path, "the gzip file unpacks to nothing (0 bytes)")
    return data


def read_idx(path: Path, ndim: int, what: str) -> Tensor:
    """A uint8 idx file (MNIST's format) as a tensor of ``ndim`` dimensions: ``[N]`` labels or ``[N, H, W]`` images.

    Checks the magic number (two zero bytes, type 0x08 = uint8, ``ndim``), that the header is
    complete, that it announces at least one item, and that the data after it is exactly the
    size the header announces. ``what`` names the items in messages ("images", "labels").
    """
    data = read_bytes(path)
    unpacked = " (unpacked)" if path.suffix == ".gz" else ""
    magic = bytes((0, 0, 0x08, ndim))
    if data[:4] != magic:
        raise DamagedDataError(
            path,
            f"starts with 0x{data[:4].hex()} where an idx file of {what} starts with 0x{magic.hex()}: "
            f"not an idx file of {what}",
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DamagedDataError(path, f"the idx header is cut short ({len(data)} of {header} bytes{unpacked})")
    sizes = struct.unpack(f">{ndim}I", data[4:header])
    if 0 in sizes:
        raise DamagedDataError(path, f"its header announces {'x'.join(map(str, sizes))} {what}: no data")
    expected = header + math.prod(sizes)
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than its header says"
        raise DamagedDataError(
            path,
            f"{state}: its header announces {sizes[0]} {what} of {'x'.join(map(str, sizes[1:])) or '1 byte'} "
            f"({expected} bytes{unpacked}), the file has {len(data)}",
        )
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(*sizes)


def check_labels(path: str | Path, labels: Tensor, num_classes: int, first: int = 0) -> None:
    """Every label in ``first..first+num_classes-1``; else name the first one outside and how many there are.

    ``first`` is 1 for files that number their classes from 1 (EMNIST letters, SVHN).
    """
    last = first + num_classes - 1
    outside = (labels < first) | (labels > last)
    if bool(outside.any()):
        index = int(outside.nonzero()[0])
        raise DamagedDataError(
            path,
            f"{int(outside.sum())} labels outside {first}..{last} "
            f"(the first: {int(labels[index])} at position {index})",
        )


def check_same_count(images_path: Path, images: Tensor, labels_path: Path, labels: Tensor) -> None:
    """As many labels as images: the two files of one split must come from one copy of the data set."""
    if len(images) != len(labels):
        raise DamagedDataError(
            images_path,
            f"holds {len(images)} images but {labels_path} holds {len(labels)} labels",
            fix="the two files must come from the same copy of the data set: replace both with the "
            "official files (or run once with benchmark.download=true after deleting them)",
        )


# ---- python pickles (CIFAR) ---------------------------------------------------------------------
# What a pickled numpy array refers to (numpy 1 and 2 names, protocols 2 to 5); nothing else is
# loaded, since unpickling any other reference could run code.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _RefusedGlobal(Exception):
    pass


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays; any other reference is refused (``_RefusedGlobal``)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise _RefusedGlobal(f"{module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = module.replace("numpy.core.", "numpy._core.")  # numpy 2's name, without its warning
        return getattr(importlib.import_module(module), name)


def read_pickle(path: Path) -> Any:
    """A python pickle of plain data and numpy arrays (as the CIFAR batches are), read as latin-1.

    Refuses an empty, truncated or non-pickle file, and one that refers to anything but numpy's
    array constructors (unpickling it could run code).
    """
    data = read_bytes(path)
    try:
        return _ArraysOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _RefusedGlobal as error:
        raise DamagedDataError(
            path,
            f"the pickle refers to {error}, which a data file never holds: not loaded (it could run code)",
        ) from None
    except Exception as error:  # unpickling garbage raises anything from EOFError to KeyError
        raise DamagedDataError(
            path, f"not a readable python pickle, or truncated ({type(error).__name__}: {error})"
        ) from None


def read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[Tensor, Tensor]:
    """One CIFAR batch file: uint8 images ``[N, 3, 32, 32]`` and int64 labels ``[N]``.

    Checks that it is a dict with ``data`` (a uint8 array of 3072 values a row) and ``label_key``
    (one integer label a row, each in ``0..num_classes-1``).
    """
    entry = read_pickle(path)
    if not isinstance(entry, dict) or "data" not in entry or label_key not in entry:
        held = (
            f"the keys {sorted(map(str, entry))}" if isinstance(entry, dict) else f"a {type(entry).__name__}"
        )
        raise DamagedDataError(
            path, f"holds {held}, not a CIFAR batch with the keys 'data' and {label_key!r}"
        )
    data = entry["data"]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
    ):
        held = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DamagedDataError(path, f"its 'data' is {held}, not uint8 rows of 3072 values (3x32x32 images)")
    try:
        labels = np.asarray(entry[label_key])
    except ValueError:  # a ragged list
        labels = None
    if labels is None or labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DamagedDataError(path, f"its {label_key!r} is not a list of integer labels")
    labels = torch.from_numpy(labels.astype(np.int64))
    if len(labels) != len(data):
        raise DamagedDataError(path, f"holds {len(data)} images but {len(labels)} labels")
    check_labels(path, labels, num_classes)
    return torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32)), labels


def read_cifar_names(path: Path, names_key: str, num_classes: int) -> tuple[str, ...]:
    """The class names of a CIFAR meta file: ``names_key`` lists ``num_classes`` strings."""
    entry = read_pickle(path)
    names = entry.get(names_key) if isinstance(entry, dict) else None
    if not isinstance(names, list) or len(names) != num_classes or not all(isinstance(n, str) for n in names):
        raise DamagedDataError(path, f"has no {names_key!r} list of {num_classes} class names")
    return tuple(names)


# ---- MATLAB .mat files (SVHN) ---------------------------------------------------------------------
def read_svhn_mat(path: Path) -> tuple[Tensor, Tensor]:
    """One of SVHN's cropped-digit files (``train_32x32.mat``, ``test_32x32.mat``): uint8 images
    ``[N, 3, 32, 32]`` and int64 labels ``[N]`` in 0..9 (the file's label 10, digit 0, becomes 0 as
    torchvision makes it).

    Read with ``scipy.io.loadmat`` (MATLAB 5 format, as the official files are), from the bytes in
    memory. Checks that ``X`` is a uint8 array ``[32, 32, 3, N]``, that ``y`` holds one label in
    1..10 per image, and refuses anything else (an HTML error page, a truncated download, a
    MATLAB 7.3 file) naming the file.
    """
    from scipy.io import loadmat  # a dependency of scikit-learn; only SVHN needs it

    data = read_bytes(path)
    try:
        entry = loadmat(io.BytesIO(data))
    except NotImplementedError as error:  # "Please use HDF reader for matlab v7.3 files"
        raise DamagedDataError(
            path, f"a MATLAB 7.3 (HDF5) file, not SVHN's MATLAB 5 file ({error})"
        ) from None
    except Exception as error:  # loadmat raises anything from ValueError to TypeError on garbage
        raise DamagedDataError(
            path, f"not a readable MATLAB .mat file, or truncated ({type(error).__name__}: {error})"
        ) from None
    images, labels = entry.get("X"), entry.get("y")
    if not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray):
        keys = sorted(key for key in entry if not key.startswith("__"))
        raise DamagedDataError(path, f"holds the variables {keys}, not SVHN's 'X' (images) and 'y' (labels)")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise DamagedDataError(
            path,
            f"its 'X' is {images.dtype} {images.shape}, not uint8 32x32x3xN (SVHN's 32x32 colour digits)",
        )
    if labels.dtype.kind not in "iuf" or labels.size != labels.shape[0] or labels.ndim not in (1, 2):
        raise DamagedDataError(path, f"its 'y' is {labels.dtype} {labels.shape}, not one label per image")
    labels = torch.from_numpy(labels.reshape(-1).astype(np.int64))
    count = images.shape[3]
    if count == 0:
        raise DamagedDataError(path, "holds no images")
    if len(labels) != count:
        raise DamagedDataError(path, f"holds {count} images but {len(labels)} labels")
    check_labels(path, labels, 10, first=1)
    # [H, W, C, N] -> [N, C, H, W], as torchvision's SVHN transposes it
    images = torch.from_numpy(np.ascontiguousarray(images.transpose(3, 2, 0, 1)))
    return images, torch.where(labels == 10, 0, labels)
