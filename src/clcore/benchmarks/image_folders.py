"""Image-folder data sets: a class per sub-folder, TinyImageNet and CUB-200-2011.

torchvision cannot fetch these: the user downloads them once (each missing-data message says
from where) and ``benchmark.root`` names the folder that holds them. Every image is decoded with
Pillow once, at load, and stacked into one uint8 tensor ``[N, C, H, W]`` per split, like the other
sources (``clcore.benchmarks.sources.ImageData``).

The entries:

- ``image_folder_source``: any data set laid out as ``<root>/<folder>/<train>/<class>/...`` and
  ``<root>/<folder>/<test>/<class>/...`` (class ids: the sorted sub-folder names; images found at
  any depth under a class folder, in sorted path order);
- ``tinyimagenet_source``: ``tiny-imagenet-200/`` as unzipped from the official archive: 200
  classes, 3x64x64, train from ``train/<wnid>/images/``, test = the official validation set
  (``val/images/`` labelled by ``val/val_annotations.txt``; the ``test/`` images have no labels);
- ``cub200_source``: ``CUB_200_2011/`` as extracted from the official archive: 200 classes, the
  official train/test split (``train_test_split.txt``), resized to ``size`` x ``size``.

``register_image_folder_sources`` registers ``tinyimagenet`` and ``cub200`` (idempotent: the
entries compare equal by value, so registering them twice changes nothing).

The resize rule (``fit_image``), the same for every source here and deterministic: the largest
centred region of the target's aspect ratio (a square for H = W) is resized to H x W with Pillow's
antialiased bilinear filter, the crop box in sub-pixel coordinates (``PIL.ImageOps.fit``); it is
the torchvision ``Resize(min side) + CenterCrop`` of evaluation pipelines, without rounding the
crop. An image already H x W is taken unchanged (TinyImageNet's are 64x64). A JPEG at least twice
as large as the target in both sides is first decoded at a reduced DCT scale (1/2, 1/4 or 1/8,
the largest that keeps both sides >= the target; ``Image.draft``), which is 2-3x faster on CUB's
~500x375 photographs. Images are converted to RGB (``C`` = 3: a grey photograph gets three equal
channels, an alpha channel is dropped) or L (``C`` = 1); EXIF orientation is not applied (as in
torchvision's ``ImageFolder``); CUB's bounding boxes are not used.

Missing files raise ``DataNotFoundError`` naming each file or folder looked for and where to get
the data; an unreadable image, an annotation naming a missing file or an unknown class, or files
that disagree raise ``DamagedDataError`` naming the file. Nothing is ever written into the data
folder. The decoded tensors are cached (``image_cache_path``, under ``$CLCORE_CACHE``, outside the
data folder) keyed on every file's path, size and modification time, the entry's parameters and
Pillow's version: a second process (a sweep's next run) reads them back in seconds instead of
decoding again (measured on one CPU core: 0.55 ms an image to list, decode and stack TinyImageNet's
files, about a minute for its 110,000; 0.8 s to read 270 MB of cache back). ``CLCORE_CACHE=""``
switches the cache off.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from clcore.benchmarks.errors import DamagedDataError, DataNotFoundError
from clcore.utils.atomic import torch_save_atomic
from clcore.utils.safe_load import load_tensors_safely

if TYPE_CHECKING:  # sources imports this module to register its entries: import it lazily at run time
    from clcore.benchmarks.sources import DataSource, ImageData

# The files a class folder's images may be (case-insensitive); any other file is ignored.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp"}
)

TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
CUB_URL = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
CUB_ARCHIVE_URL = "https://data.caltech.edu/records/65de6-vp158"

# Per-channel statistics of the training images, as published with the common Split protocols
# (10 tasks x 20 classes each) in mammoth (Buzzega et al. 2020; Boschini et al. 2022):
# datasets/seq_tinyimagenet.py and datasets/seq_cub200.py of github.com/aimagelab/mammoth.
TINYIMAGENET_MEAN, TINYIMAGENET_STD = (0.4802, 0.4480, 0.3975), (0.2770, 0.2691, 0.2821)
CUB200_MEAN, CUB200_STD = (0.4856, 0.4994, 0.4324), (0.2272, 0.2226, 0.2613)
# ImageNet's, for a data set without statistics of its own and an ImageNet-pretrained backbone.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Part of the cache key: bump it when the decoding or the resize rule changes.
DECODE_VERSION = "fit-bilinear-draft-1"


# ---- decoding and the resize rule -------------------------------------------------------------------
def fit_image(image, size: tuple[int, int]):
    """``image`` (a PIL image) as ``size = (H, W)``: the module's resize rule (see its docstring)."""
    from PIL import Image, ImageOps

    height, width = size
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.BILINEAR)


def decode_image(path: Path, size: tuple[int, int], channels: int, fix: str) -> np.ndarray:
    """One image file as a uint8 array ``[channels, H, W]`` (``fit_image``); ``DamagedDataError``
    naming it, with ``fix``, when Pillow cannot read it."""
    from PIL import Image

    height, width = size
    try:
        with Image.open(path) as image:
            image.draft(None, (width, height))  # JPEG only (a no-op for other formats)
            converted = image.convert("RGB" if channels == 3 else "L")  # decodes the file
        array = np.asarray(fit_image(converted, size))
    except Exception as error:  # Pillow raises anything from OSError to SyntaxError on a bad file
        raise DamagedDataError(
            path, f"not a readable image ({type(error).__name__}: {error})", fix=fix
        ) from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def decode_images(
    paths: Sequence[Path],
    size: tuple[int, int],
    channels: int,
    fix: str,
    workers: int | None = None,
    chunk: int = 256,
) -> Tensor:
    """The images at ``paths``, in that order, as one uint8 tensor ``[N, channels, H, W]``.

    Decoded by ``workers`` threads (default: the usable CPUs, at most 8; Pillow decodes and resizes
    without holding the GIL), ``chunk`` files a job, straight into one preallocated array: no
    second copy of the data set, and the result is the same for any number of workers.
    A damaged file raises ``DamagedDataError`` naming the first damaged one in ``paths`` order.
    """
    height, width = size
    out = np.empty((len(paths), channels, height, width), dtype=np.uint8)

    def decode_range(start: int, stop: int) -> None:
        for index in range(start, stop):
            out[index] = decode_image(paths[index], size, channels, fix)

    if workers is None:
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        workers = min(8, usable or 1)
    ranges = [(start, min(start + chunk, len(paths))) for start in range(0, len(paths), chunk)]
    if workers <= 1 or len(ranges) <= 1:
        for start, stop in ranges:
            decode_range(start, stop)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(decode_range, start, stop) for start, stop in ranges]
            try:
                for future in futures:  # in order: the first damaged file is reported
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return torch.from_numpy(out)


def _image_files(folder: Path) -> list[Path]:
    """The images at any depth under ``folder``, sorted by their path relative to it; hidden files
    (``.DS_Store``, macOS's ``._name.jpg``) and hidden folders skipped."""
    found = []
    for directory, subfolders, files in os.walk(folder, followlinks=True):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(directory, name))
    return sorted(found, key=lambda path: path.relative_to(folder).as_posix())


def _class_folders(folder: Path) -> list[str]:
    """The sub-folder names of ``folder`` (hidden ones skipped), sorted: class id = position."""
    return sorted(
        entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )


def _channel_statistics(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, scaled to 0..1 (chunked, float64)."""
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].to(torch.float64).div_(255.0)
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    count = images.numel() // channels
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


# ---- the cache of decoded tensors ---------------------------------------------------------------------
def image_cache_path(name: str, key: str) -> Path | None:
    """``$CLCORE_CACHE`` (default ``$XDG_CACHE_HOME/clcore`` or ``~/.cache/clcore``)
    ``/image-folders/<name>-<key>.pt``; None when ``CLCORE_CACHE=""`` switches caching off."""
    folder = os.environ.get("CLCORE_CACHE")
    if folder == "":
        return None
    if folder is None:
        folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "clcore")
    return Path(folder) / "image-folders" / f"{name}-{key}.pt"


def _files_key(loader: object, base: Path, files: Sequence[Path]) -> str:
    """A digest of ``loader`` (its parameters), the decoding rule, Pillow's version, and every file's
    path (relative to ``base``), size and modification time: a replaced or edited file changes it."""
    import PIL

    digest = hashlib.blake2b(digest_size=10)
    digest.update(f"{DECODE_VERSION}|PIL {PIL.__version__}|{loader!r}".encode())
    for path in files:
        stat = path.stat()
        digest.update(f"\n{path.relative_to(base).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _cached(name: str, key: str, build: Callable[[], ImageData]) -> ImageData:
    """The data cached under ``key``, else ``build()`` (then cached: written atomically, a failed
    write ignored; an unreadable cache file is rebuilt and replaced)."""
    from clcore.benchmarks.sources import ImageData

    cache = image_cache_path(name, key)
    if cache is not None and cache.is_file():
        try:
            return ImageData(**load_tensors_safely(cache, f"{name} image cache"))
        except (OSError, RuntimeError, TypeError, ValueError, EOFError, pickle.UnpicklingError):
            pass  # damaged or foreign: built again below and rewritten
    data = build()
    if cache is not None:
        try:  # atomic: a concurrent run never reads half a file
            torch_save_atomic(cache, {field.name: getattr(data, field.name) for field in fields(data)})
        except OSError:
            pass  # no space, a read-only home: the data was loaded anyway
    return data


# ---- messages ---------------------------------------------------------------------------------------
def _not_found(what: str, folder: Path, missing: list[str], how: str, download: bool) -> DataNotFoundError:
    fetch = (
        " (benchmark.download=true cannot fetch it: torchvision has no downloader for it)" if download else ""
    )
    return DataNotFoundError(f"{what} not found in {folder}/ (missing {', '.join(missing)}){fetch}. {how}")


def _check_count(path: Path, found: int, expected: int, what: str, name: str, fix: str) -> None:
    """``found`` classes where the entry states ``expected``: the copy is incomplete (or the entry wrong)."""
    if found != expected:
        raise DamagedDataError(
            path,
            f"holds {found} {what}, but the source {name!r} is registered with {expected} classes",
            fix=f"{fix} (or register the source with the class count of this copy)",
        )


def _lines(path: Path, fix: str) -> list[tuple[int, str]]:
    """The non-blank lines of a text file, with their 1-based numbers; an empty or binary file is damaged."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DamagedDataError(path, f"not a UTF-8 text file ({error})", fix=fix) from None
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise DamagedDataError(path, "the file is empty", fix=fix)
    return lines


# ---- a class per sub-folder -------------------------------------------------------------------------
def load_image_folder(
    train_dir: str | Path,
    test_dir: str | Path,
    image_size: tuple[int, int],
    *,
    name: str = "image_folder",
    channels: int = 3,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageData:
    """A data set with a sub-folder of images per class in ``train_dir`` and ``test_dir``.

    Class ids are the positions of the sorted sub-folder names of ``train_dir``; ``test_dir`` must
    hold the same class folders, and every class folder at least one image (any depth, any of
    ``IMAGE_EXTENSIONS``; other files are ignored). Images are decoded and resized to
    ``image_size = (H, W)`` by ``fit_image``, as RGB (``channels=3``) or grey (``channels=1``).
    Class names are the folder names with ``_`` as spaces. ``num_classes``, when given, must be the
    number of class folders. ``mean`` / ``std`` default to the training images' own statistics.
    Not cached (the registered sources cache their data): call it through a source to cache.
    """
    train_dir, test_dir = Path(train_dir), Path(test_dir)
    fix = "replace it with the file of an intact copy of the data set, or delete it"
    missing = [f"{path}/" for path in (train_dir, test_dir) if not path.is_dir()]
    if missing:
        raise DataNotFoundError(
            f"{name}: image folder(s) not found: {', '.join(missing)} (each must hold one sub-folder of "
            f"images per class)"
        )
    train_files, test_files, classes = _folder_files(train_dir, test_dir, name, num_classes)
    return _decode_folder_splits(name, train_files, test_files, classes, image_size, channels, mean, std, fix)


def _folder_files(
    train_dir: Path, test_dir: Path, name: str, num_classes: int | None
) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], list[str]]:
    """``(path, class id)`` of every train and test image, and the sorted class folder names."""
    classes = _class_folders(train_dir)
    if not classes:
        raise DamagedDataError(
            train_dir,
            "holds no class folders",
            fix="put one sub-folder of images per class in it (the folder name is the class name)",
        )
    if num_classes is not None:
        fix = "use a complete copy of the data set"
        _check_count(train_dir, len(classes), num_classes, "class folders", name, fix)
    test_classes = _class_folders(test_dir)
    if test_classes != classes:
        extra = sorted(set(test_classes) - set(classes))
        lacking = sorted(set(classes) - set(test_classes))
        problem = "; ".join(
            part
            for part in (
                f"has class folder(s) {', '.join(extra)} that {train_dir}/ lacks" if extra else "",
                f"lacks class folder(s) {', '.join(lacking)} of {train_dir}/" if lacking else "",
            )
            if part
        )
        raise DamagedDataError(
            test_dir, problem, fix="the train and test folders must hold the same class folders"
        )
    splits = []
    for folder in (train_dir, test_dir):
        files = []
        for class_id, class_name in enumerate(classes):
            images = _image_files(folder / class_name)
            if not images:
                raise DamagedDataError(
                    folder / class_name,
                    f"holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})",
                    fix="put the class's images in it, or remove the class from both folders",
                )
            files += [(path, class_id) for path in images]
        splits.append(files)
    return splits[0], splits[1], classes


def _decode_folder_splits(
    name: str,
    train_files: list[tuple[Path, int]],
    test_files: list[tuple[Path, int]],
    classes: list[str],
    image_size: tuple[int, int],
    channels: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    fix: str,
    class_names: Sequence[str] | None = None,
) -> ImageData:
    """Both splits decoded (``decode_images``) into one ``ImageData``; class names default to the
    folder names with ``_`` as spaces, ``mean`` / ``std`` to the training images' statistics."""
    from clcore.benchmarks.sources import ImageData

    decoded = []
    for files in (train_files, test_files):
        images = decode_images([path for path, _ in files], image_size, channels, fix)
        labels = torch.tensor([label for _, label in files], dtype=torch.long)
        decoded.append((images, labels))
    (train_images, train_labels), (test_images, test_labels) = decoded
    if mean is None or std is None:
        mean, std = _channel_statistics(train_images)
    if class_names is None:
        class_names = tuple(class_name.replace("_", " ") for class_name in classes)
    return ImageData(
        name,
        train_images,
        train_labels,
        test_images,
        test_labels,
        len(classes),
        tuple(mean),
        tuple(std),
        tuple(class_names),
    )


@dataclass(frozen=True)
class ImageFolderLoader:
    """The loader of ``image_folder_source``: ``<root>/<folder>/<train_subdir>`` and ``<test_subdir>``.

    A frozen dataclass, so two entries built with the same arguments are equal (registering one
    twice is allowed) and the cache key holds every parameter (its ``repr``).
    """

    name: str
    folder: str
    num_classes: int
    image_shape: tuple[int, int, int]
    train_subdir: str = "train"
    test_subdir: str = "test"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    url: str | None = None

    def __call__(self, root: str | None, download: bool = False) -> ImageData:
        base = Path(root).expanduser() / self.folder
        train_dir, test_dir = base / self.train_subdir, base / self.test_subdir
        missing = [f"{path.relative_to(base)}/" for path in (train_dir, test_dir) if not path.is_dir()]
        if missing:
            get = f"Get the data set from {self.url} and put" if self.url else "Put"
            how = (
                f"{get} one sub-folder of images per class in {train_dir}/ and in {test_dir}/, "
                f"or set benchmark.root to the folder that holds {self.folder}/."
            )
            raise _not_found(self.name, base, missing, how, download)
        fix = (
            f"replace it with the file of an intact copy ({self.url})"
            if self.url
            else "replace it with the file of an intact copy of the data set, or delete it"
        )
        train_files, test_files, classes = _folder_files(train_dir, test_dir, self.name, self.num_classes)
        channels, height, width = self.image_shape
        paths = [path for path, _ in train_files + test_files]

        def build() -> ImageData:
            return _decode_folder_splits(
                self.name,
                train_files,
                test_files,
                classes,
                (height, width),
                channels,
                self.mean,
                self.std,
                fix,
            )

        return _cached(self.name, _files_key(self, base, paths), build)


def image_folder_source(
    name: str,
    folder: str,
    num_classes: int,
    image_shape: tuple[int, int, int],
    train_subdir: str = "train",
    test_subdir: str = "test",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    url: str | None = None,
) -> DataSource:
    """The registry entry of a data set laid out as ``<root>/<folder>/<train_subdir>/<class>/*`` and
    ``<root>/<folder>/<test_subdir>/<class>/*`` (``load_image_folder``'s rules).

    ``num_classes`` and ``image_shape = (C, H, W)`` are stated here because a benchmark judges a
    configuration from the entry before loading anything; the loader checks the class count
    against the folders, and resizes every image to ``H x W`` (``C``: 3 RGB, 1 grey). ``mean`` /
    ``std``: the per-channel statistics; None computes them from the training images at load.
    ``url``: where to get the data, named in the message of a missing data set.

    Register it with ``clcore.benchmarks.sources.register_source(image_folder_source(...))``.
    """
    from clcore.benchmarks.sources import DataSource

    channels = image_shape[0]
    if channels not in (1, 3):
        raise ValueError(f"image_shape={image_shape}: images are read as RGB (C=3) or grey (C=1)")
    loader = ImageFolderLoader(
        name,
        folder,
        num_classes,
        tuple(image_shape),
        train_subdir,
        test_subdir,
        None if mean is None else tuple(mean),
        None if std is None else tuple(std),
        url,
    )
    return DataSource(name, num_classes, tuple(image_shape), loader)


# ---- TinyImageNet -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TinyImageNetLoader:
    """``<root>/<folder>/`` in the official archive's layout (``tinyimagenet_source``)."""

    name: str = "tinyimagenet"
    folder: str = "tiny-imagenet-200"
    num_classes: int = 200
    size: int = 64
    mean: tuple[float, ...] = TINYIMAGENET_MEAN
    std: tuple[float, ...] = TINYIMAGENET_STD

    def __call__(self, root: str | None, download: bool = False) -> ImageData:
        base = Path(root).expanduser() / self.folder
        wnids_path, words_path = base / "wnids.txt", base / "words.txt"
        train_dir, val_images = base / "train", base / "val" / "images"
        annotations_path = base / "val" / "val_annotations.txt"
        looked_for = (wnids_path, words_path, train_dir, val_images, annotations_path)
        missing = [
            f"{path.relative_to(base)}{'/' if path in (train_dir, val_images) else ''}"
            for path in looked_for
            if not (path.is_dir() if path in (train_dir, val_images) else path.is_file())
        ]
        if missing:
            how = (
                f"Download {TINYIMAGENET_URL} and unzip it in {Path(root).expanduser()}/ (it unpacks to "
                f"{self.folder}/), or set benchmark.root to the folder that holds {self.folder}/."
            )
            raise _not_found("TinyImageNet", base, missing, how, download)
        fix = f"unzip an intact copy of the official archive ({TINYIMAGENET_URL}) over it"

        wnids = self._wnids(wnids_path, fix)
        class_of = {wnid: class_id for class_id, wnid in enumerate(wnids)}
        class_names = self._class_names(words_path, wnids, fix)
        train_files = self._train_files(train_dir, wnids, class_of, fix)
        test_files = self._val_files(annotations_path, val_images, class_of, fix)
        paths = [wnids_path, words_path, annotations_path] + [path for path, _ in train_files + test_files]

        def build() -> ImageData:
            return _decode_folder_splits(
                self.name,
                train_files,
                test_files,
                wnids,
                (self.size, self.size),
                3,
                self.mean,
                self.std,
                fix,
                class_names,
            )

        return _cached(self.name, _files_key(self, base, paths), build)

    def _wnids(self, path: Path, fix: str) -> list[str]:
        """The class ids (WordNet ids), sorted: class id = position, as the train folders sort."""
        wnids = [line for _, line in _lines(path, fix)]
        if len(set(wnids)) != len(wnids):
            twice = sorted({wnid for wnid in wnids if wnids.count(wnid) > 1})
            raise DamagedDataError(path, f"lists {', '.join(twice)} more than once", fix=fix)
        _check_count(path, len(wnids), self.num_classes, "class ids (wnids)", self.name, fix)
        return sorted(wnids)

    @staticmethod
    def _class_names(path: Path, wnids: list[str], fix: str) -> tuple[str, ...]:
        """Each class's first synonym in ``words.txt`` ("n01443537<TAB>goldfish, Carassius auratus")."""
        words = {}
        for number, line in _lines(path, fix):
            wnid, _, names = line.partition("\t")
            if not names:
                raise DamagedDataError(
                    path, f"line {number} ({line[:60]!r}) is not '<wnid><TAB><names>'", fix=fix
                )
            words[wnid.strip()] = names.split(",")[0].strip()
        unnamed = [wnid for wnid in wnids if wnid not in words]
        if unnamed:
            raise DamagedDataError(
                path,
                f"names no class {', '.join(unnamed[:5])}{' ...' if len(unnamed) > 5 else ''} of wnids.txt",
                fix=fix,
            )
        return tuple(words[wnid] for wnid in wnids)

    @staticmethod
    def _train_files(
        train_dir: Path, wnids: list[str], class_of: dict[str, int], fix: str
    ) -> list[tuple[Path, int]]:
        """``train/<wnid>/images/*.JPEG`` (images at any depth under ``train/<wnid>/``)."""
        unknown = [name for name in _class_folders(train_dir) if name not in class_of]
        if unknown:
            raise DamagedDataError(
                train_dir / unknown[0],
                f"is the folder of a class ({unknown[0]}) that wnids.txt does not list"
                + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
                fix=fix,
            )
        files = []
        for wnid in wnids:
            folder = train_dir / wnid
            images = _image_files(folder) if folder.is_dir() else []
            if not images:
                state = "holds no images" if folder.is_dir() else "is missing"
                raise DamagedDataError(
                    folder, f"{state}: class {wnid} of wnids.txt has no training images", fix=fix
                )
            files += [(path, class_of[wnid]) for path in images]
        return files

    @staticmethod
    def _val_files(
        path: Path, val_images: Path, class_of: dict[str, int], fix: str
    ) -> list[tuple[Path, int]]:
        """``val_annotations.txt``: "val_0.JPEG<TAB>n03444034<TAB>x0<TAB>y0<TAB>x1<TAB>y1" a line."""
        files, seen = [], set()
        for number, line in _lines(path, fix):
            parts = line.split()
            if len(parts) < 2:
                raise DamagedDataError(
                    path, f"line {number} ({line[:60]!r}) is not '<file><TAB><wnid>...'", fix=fix
                )
            name, wnid = parts[0], parts[1]
            if wnid not in class_of:
                raise DamagedDataError(
                    path, f"line {number} labels {name} with {wnid}, a class wnids.txt does not list", fix=fix
                )
            if name in seen:
                raise DamagedDataError(path, f"line {number} labels {name} a second time", fix=fix)
            image = val_images / name
            if not image.is_file():
                raise DamagedDataError(path, f"line {number} labels {image}, which does not exist", fix=fix)
            seen.add(name)
            files.append((image, class_of[wnid]))
        return files


def tinyimagenet_source(
    name: str = "tinyimagenet",
    folder: str = "tiny-imagenet-200",
    num_classes: int = 200,
    size: int = 64,
    mean: Sequence[float] = TINYIMAGENET_MEAN,
    std: Sequence[float] = TINYIMAGENET_STD,
) -> DataSource:
    """The entry of TinyImageNet (Le & Yang 2015) read from ``<root>/<folder>/``.

    Layout (the official archive, ``TINYIMAGENET_URL``): ``wnids.txt`` (the class ids),
    ``words.txt`` (names of every WordNet id: a class's name is its first synonym),
    ``train/<wnid>/images/*.JPEG`` (500 a class), ``val/images/*.JPEG`` with
    ``val/val_annotations.txt`` (file, wnid, bounding box; 50 a class) as the test split; the
    unlabelled ``test/`` is not read. Class ids: the sorted wnids. Images ``3 x size x size``
    (64 leaves the official images untouched). A different ``num_classes`` serves a smaller copy
    in the same layout (tests).
    """
    from clcore.benchmarks.sources import DataSource

    loader = TinyImageNetLoader(name, folder, num_classes, size, tuple(mean), tuple(std))
    return DataSource(name, num_classes, (3, size, size), loader)


# ---- CUB-200-2011 -----------------------------------------------------------------------------------
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def cub_class_name(folder_name: str) -> str:
    """``"001.Black_footed_Albatross"`` -> ``"Black footed Albatross"``."""
    return re.sub(r"^\d+\.", "", folder_name).replace("_", " ").strip()


@dataclass(frozen=True)
class Cub200Loader:
    """``<root>/<folder>/`` in the official archive's layout (``cub200_source``)."""

    name: str = "cub200"
    folder: str = "CUB_200_2011"
    num_classes: int = 200
    size: int = 64
    mean: tuple[float, ...] = CUB200_MEAN
    std: tuple[float, ...] = CUB200_STD

    def __call__(self, root: str | None, download: bool = False) -> ImageData:
        base = Path(root).expanduser() / self.folder
        images_dir = base / "images"
        missing = [name for name in CUB_FILES if not (base / name).is_file()]
        missing += [] if images_dir.is_dir() else ["images/"]
        if missing:
            how = (
                f"Download CUB_200_2011.tgz from {CUB_URL} (or the CaltechDATA record {CUB_ARCHIVE_URL}) "
                f"and extract it in {Path(root).expanduser()}/ (it unpacks to {self.folder}/), or set "
                f"benchmark.root to the folder that holds {self.folder}/."
            )
            raise _not_found("CUB-200-2011", base, missing, how, download)
        fix = f"extract an intact copy of the official archive ({CUB_URL}) over it"

        classes = self._table(base / "classes.txt", fix)
        if sorted(classes) != list(range(1, len(classes) + 1)):
            raise DamagedDataError(base / "classes.txt", "its class ids are not 1..N, each once", fix=fix)
        _check_count(base / "classes.txt", len(classes), self.num_classes, "classes", self.name, fix)
        folders = [classes[class_id] for class_id in range(1, len(classes) + 1)]
        class_of_folder = {folder: class_id - 1 for class_id, folder in enumerate(folders, 1)}
        paths = self._table(base / "images.txt", fix)
        labels = self._table(base / "image_class_labels.txt", fix, integer=True)
        split = self._table(base / "train_test_split.txt", fix, integer=True)
        splits: dict[int, list[tuple[Path, int]]] = {1: [], 0: []}
        for image_id in sorted(paths):
            relative = paths[image_id]
            for table, values, file, allowed in (
                (labels, range(1, self.num_classes + 1), "image_class_labels.txt", f"1..{self.num_classes}"),
                (split, (0, 1), "train_test_split.txt", "0 (test) or 1 (train)"),
            ):
                if image_id not in table:
                    raise DamagedDataError(
                        base / file, f"has no line for image {image_id} of images.txt", fix=fix
                    )
                if table[image_id] not in values:
                    raise DamagedDataError(
                        base / file,
                        f"gives image {image_id} the value {table[image_id]}, not {allowed}",
                        fix=fix,
                    )
            label = labels[image_id] - 1
            folder = relative.split("/")[0]
            if folder in class_of_folder and class_of_folder[folder] != label:
                raise DamagedDataError(
                    base / "image_class_labels.txt",
                    f"gives image {image_id} class {label + 1} ({folders[label]}), but images.txt "
                    f"places it in {folder}/",
                    fix=fix,
                )
            image = images_dir / relative
            if not image.is_file():
                raise DamagedDataError(
                    base / "images.txt", f"lists image {image_id} as {image}, which does not exist", fix=fix
                )
            splits[split[image_id]].append((image, label))
        for is_train, what in ((1, "training"), (0, "test")):
            if not splits[is_train]:
                raise DamagedDataError(base / "train_test_split.txt", f"marks no image as {what}", fix=fix)
        files = [base / name for name in CUB_FILES] + [path for path, _ in splits[1] + splits[0]]

        def build() -> ImageData:
            return _decode_folder_splits(
                self.name,
                splits[1],
                splits[0],
                folders,
                (self.size, self.size),
                3,
                self.mean,
                self.std,
                fix,
                tuple(cub_class_name(folder) for folder in folders),
            )

        return _cached(self.name, _files_key(self, base, files), build)

    @staticmethod
    def _table(path: Path, fix: str, integer: bool = False) -> dict[int, str] | dict[int, int]:
        """A CUB metadata file, "<id> <value>" a line, as ``{id: value}``; malformed lines are damage."""
        table: dict = {}
        for number, line in _lines(path, fix):
            key, _, value = line.partition(" ")
            value = value.strip()
            valid = key.isdigit() and value and (not integer or value.lstrip("-").isdigit())
            if not valid:
                kind = "integer" if integer else "value"
                raise DamagedDataError(path, f"line {number} ({line[:60]!r}) is not '<id> <{kind}>'", fix=fix)
            if int(key) in table:
                raise DamagedDataError(path, f"line {number} gives id {int(key)} a second time", fix=fix)
            table[int(key)] = int(value) if integer else value
        return table


def cub200_source(
    name: str = "cub200",
    folder: str = "CUB_200_2011",
    num_classes: int = 200,
    size: int = 64,
    mean: Sequence[float] = CUB200_MEAN,
    std: Sequence[float] = CUB200_STD,
) -> DataSource:
    """The entry of CUB-200-2011 (Wah et al. 2011) read from ``<root>/<folder>/``.

    Layout (the official archive, ``CUB_URL``): ``images.txt`` ("<id> <path under images/>"),
    ``image_class_labels.txt`` ("<id> <class, 1-based>"), ``train_test_split.txt``
    ("<id> <1 train, 0 test>"), ``classes.txt`` ("<class> 001.Black_footed_Albatross") and
    ``images/<class folder>/*.jpg``: 5,994 training and 5,794 test images of 200 bird species.
    Class names are cleaned (``cub_class_name``); images resized to ``3 x size x size``
    (``fit_image``; 64 keeps the uint8 data at 145 MB, 128 at 579 MB).
    """
    from clcore.benchmarks.sources import DataSource

    loader = Cub200Loader(name, folder, num_classes, size, tuple(mean), tuple(std))
    return DataSource(name, num_classes, (3, size, size), loader)


def register_image_folder_sources() -> None:
    """Register ``tinyimagenet`` and ``cub200`` (3x64x64 each); calling it again changes nothing."""
    from clcore.benchmarks.sources import register_source

    register_source(tinyimagenet_source())
    register_source(cub200_source())
