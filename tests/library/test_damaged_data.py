"""Damaged data gets the right diagnosis; the data fingerprint; split benchmarks that would drop classes.

Tiny data sets are written in the real on-disk formats (MNIST idx files plain and .gz, the CIFAR
python pickles), then one file is damaged. The load must raise ``DamagedDataError`` naming that
file and the damage, and leave the data folder exactly as it was (no unpacked file left behind).
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from clcore.benchmarks import DamagedDataError, DataNotFoundError, SplitBenchmark
from clcore.benchmarks.sources import (
    SOURCES,
    DataSource,
    ImageData,
    load_mnist,
    load_source,
    register_source,
    torchvision_source,
)
from clcore.config_rules import ConfigError

MNIST_COUNTS = {"train": 20, "t10k": 10}


# ---- tiny data sets in the real formats -------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    return (
        struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    )


def mnist_arrays(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    count = MNIST_COUNTS[prefix]
    labels = (np.arange(count) % 10).astype(np.uint8)
    images = (np.arange(count * 28 * 28) % 251).astype(np.uint8).reshape(count, 28, 28)
    return images, labels


def write_mnist(root: Path, packed: bool = False) -> Path:
    """``root/MNIST/raw/`` with the four idx files (``.gz`` when ``packed``); returns the raw folder."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix in MNIST_COUNTS:
        images, labels = mnist_arrays(prefix)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if packed:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (raw / name).write_bytes(data)
    return raw


def cifar_batch(count: int, label_key: str, num_classes: int, offset: int = 0) -> dict:
    data = ((np.arange(count * 3072) + offset) % 256).astype(np.uint8).reshape(count, 3072)
    return {"batch_label": "tiny", label_key: [i % num_classes for i in range(count)], "data": data}


def write_cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for index in range(1, 6):  # protocol 2, like the official Python 2 files
        batch = cifar_batch(4, "labels", 10, offset=index)
        (folder / f"data_batch_{index}").write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(cifar_batch(4, "labels", 10), protocol=2))
    names = {"label_names": [f"class_{c}" for c in range(10)], "num_cases_per_batch": 4}
    (folder / "batches.meta").write_bytes(pickle.dumps(names, protocol=2))
    return folder


def write_cifar100(root: Path) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    (folder / "train").write_bytes(pickle.dumps(cifar_batch(6, "fine_labels", 100)))
    (folder / "test").write_bytes(pickle.dumps(cifar_batch(4, "fine_labels", 100)))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c_{c}" for c in range(100)]}))
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: the listing and the content in one value."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# ---- the damage ---------------------------------------------------------------------------------
def pickled(obj: object) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(pickle.dumps(obj))


def edit_pickle(**changes) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        entry = pickle.loads(path.read_bytes())
        for key, value in changes.items():
            if value is None:
                del entry[key]
            else:
                entry[key] = value(entry) if callable(value) else value
        path.write_bytes(pickle.dumps(entry))

    return edit


def truncate(keep: int | None = None, drop: int | None = None) -> Callable[[Path], None]:
    def cut(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[:keep] if keep is not None else data[:-drop])

    return cut


def set_header_count(count: int) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[4:8] = struct.pack(">I", count)
        path.write_bytes(bytes(data))

    return edit


def mnist_labels_with(value: int) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        labels = mnist_arrays("train")[1]
        labels[7] = value
        path.write_bytes(idx_bytes(labels))

    return edit


def gz_with_bad_crc(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 of the trailer
    path.write_bytes(bytes(data))


class RunsCode:
    """A pickle that would create ``marker`` when unpickled by an unrestricted reader."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


MARKER = Path(tempfile.gettempdir()) / "clcore_test_pickle_payload_ran"

TI, TL, EI = "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"
# (format, file damaged, damage, words the message must hold)
CASES = [
    ("mnist", TI, lambda p: p.write_bytes(b""), "empty"),
    ("mnist", TI, truncate(drop=100), "truncated"),
    ("mnist", TI, set_header_count(21), "truncated: its header announces 21 images"),
    ("mnist", TI, lambda p: p.write_bytes(p.read_bytes() + b"\0" * 5), "longer than its header says"),
    ("mnist", TI, truncate(keep=10), "header is cut short"),
    ("mnist", TI, lambda p: p.write_bytes(b"PK\x03\x04" + b"\0" * 100), "not an idx file of images"),
    ("mnist", TI, lambda p: p.write_bytes(idx_bytes(mnist_arrays("train")[1])), "not an idx file of images"),
    ("mnist", TI, set_header_count(0), "no data"),
    ("mnist", TL, lambda p: p.write_bytes(idx_bytes(mnist_arrays("train")[1][:19])), "holds 20 images but"),
    ("mnist", TL, mnist_labels_with(12), "labels outside 0..9 (the first: 12 at position 7)"),
    (
        "mnist",
        EI,
        lambda p: p.write_bytes(idx_bytes(np.zeros((10, 32, 32), np.uint8))),
        "32x32, MNIST's are 28x28",
    ),
    ("mnist.gz", TI + ".gz", lambda p: p.write_bytes(b"not gzip at all"), "named .gz but not a gzip file"),
    ("mnist.gz", TI + ".gz", truncate(drop=30), "gzip stream ends early"),
    ("mnist.gz", TI + ".gz", gz_with_bad_crc, "gzip data is corrupt"),
    ("mnist.gz", TI + ".gz", lambda p: p.write_bytes(gzip.compress(b"")), "unpacks to nothing"),
    ("mnist.gz", TI + ".gz", lambda p: p.write_bytes(gzip.compress(b"\0" * 40)), "not an idx file"),
    ("mnist.gz", TL + ".gz", lambda p: p.write_bytes(b""), "empty"),
    ("cifar10", "data_batch_3", lambda p: p.write_bytes(b""), "empty"),
    ("cifar10", "data_batch_3", truncate(drop=500), "not a readable python pickle, or truncated"),
    ("cifar10", "test_batch", lambda p: p.write_text("<html>404</html>"), "not a readable python pickle"),
    (
        "cifar10",
        "data_batch_1",
        edit_pickle(labels=None),
        "not a CIFAR batch with the keys 'data' and 'labels'",
    ),
    ("cifar10", "data_batch_1", pickled([1, 2, 3]), "holds a list, not a CIFAR batch"),
    ("cifar10", "data_batch_1", edit_pickle(data=lambda e: e["data"][:, :3000]), "not uint8 rows of 3072"),
    ("cifar10", "data_batch_1", edit_pickle(data=lambda e: e["data"].astype(np.int16)), "int16"),
    ("cifar10", "data_batch_2", edit_pickle(labels=lambda e: e["labels"][:3]), "holds 4 images but 3 labels"),
    ("cifar10", "test_batch", edit_pickle(labels=[0, 1, 10, 2]), "labels outside 0..9 (the first: 10"),
    (
        "cifar10",
        "test_batch",
        edit_pickle(labels=["cat", "dog", "cat", "dog"]),
        "not a list of integer labels",
    ),
    ("cifar10", "test_batch", edit_pickle(labels=[0.5, 1.0, 2.0, 3.0]), "not a list of integer labels"),
    (
        "cifar10",
        "batches.meta",
        edit_pickle(label_names=lambda e: e["label_names"][:9]),
        "no 'label_names' list",
    ),
    ("cifar10", "data_batch_1", pickled(RunsCode(MARKER)), "refers to posix.mkdir"),
    ("cifar100", "train", edit_pickle(fine_labels=lambda e: [99, 100, 0, 0, 0, 0]), "labels outside 0..99"),
    ("cifar100", "test", edit_pickle(fine_labels=None), "'fine_labels'"),
    ("cifar100", "meta", lambda p: p.write_bytes(b"\x80\x04"), "not a readable python pickle"),
]
WRITERS = {
    "mnist": lambda root: write_mnist(root),
    "mnist.gz": lambda root: write_mnist(root, packed=True),
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
}


def load(fmt: str, root: Path) -> ImageData:
    """The format's loader itself (not ``load_source``'s per-process cache)."""
    return SOURCES[fmt.removesuffix(".gz")].load(str(root), False)


@pytest.mark.parametrize(
    ("fmt", "name", "damage", "words"), CASES, ids=[f"{c[0]}-{c[1]}-{c[3]}" for c in CASES]
)
def test_a_damaged_file_is_named_with_its_damage_and_nothing_is_written(tmp_path, fmt, name, damage, words):
    root = tmp_path / "data"
    folder = WRITERS[fmt](root)
    damage(folder / name)
    before = snapshot(root)
    with pytest.raises(DamagedDataError) as error:
        load(fmt, root)
    message = str(error.value)
    assert str(folder / name) in message, message
    assert words in message, message
    assert "not found" not in message
    assert "delete it" in message or "replace" in message  # and what to do about it
    assert snapshot(root) == before  # no unpacked file, no partial file, nothing changed
    assert not MARKER.exists(), "a data pickle's code was run"


def test_the_preflight_check_reports_damage_as_a_data_problem(tmp_path):
    """``DamagedDataError`` is a ``ValueError``: ``clrun``'s pre-flight check lists it as a benchmark problem."""
    raw = write_mnist(tmp_path)
    (raw / TI).write_bytes(b"")
    assert issubclass(DamagedDataError, ValueError)
    copy = pickle.loads(pickle.dumps(DamagedDataError(raw / TI, "the file is empty")))
    assert str(copy) == str(DamagedDataError(raw / TI, "the file is empty")) and copy.path == raw / TI
    with pytest.raises(ValueError, match="empty"):
        load_source("mnist", str(tmp_path))


def test_a_damaged_plain_file_beside_its_gz_says_to_delete_it(tmp_path):
    """The state an older version left behind: an empty unpacked file next to the intact ``.gz``."""
    raw = write_mnist(tmp_path, packed=True)
    (raw / TI).write_bytes(b"")
    with pytest.raises(
        DamagedDataError, match=rf"empty \(0 bytes\); delete it: {TI}.gz beside it is read instead"
    ):
        load_mnist(tmp_path)
    (raw / TI).unlink()
    assert load_mnist(tmp_path).train_images.shape == (20, 1, 28, 28)


def test_repairing_the_file_makes_the_next_load_succeed(tmp_path):
    raw = write_mnist(tmp_path, packed=True)
    intact = (raw / f"{TI}.gz").read_bytes()
    (raw / f"{TI}.gz").write_bytes(b"<html>proxy error</html>")
    with pytest.raises(DamagedDataError, match="not a gzip file"):
        load_mnist(tmp_path)
    assert not (raw / TI).exists()  # nothing unpacked that would hide the fix
    (raw / f"{TI}.gz").write_bytes(intact)
    data = load_mnist(tmp_path)
    images, labels = mnist_arrays("train")
    assert torch.equal(data.train_images[:, 0], torch.from_numpy(images))
    assert torch.equal(data.train_labels, torch.from_numpy(labels).long())


@pytest.mark.parametrize("fmt", ["mnist", "mnist.gz", "cifar10", "cifar100"])
def test_intact_tiny_files_load(tmp_path, fmt):
    folder = WRITERS[fmt](tmp_path)
    data = load(fmt, tmp_path)
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    if fmt.startswith("cifar"):
        # a CIFAR row is one image's 3072 values in channel, row, column order: [3, 32, 32]
        batch = pickle.loads((folder / ("test_batch" if fmt == "cifar10" else "test")).read_bytes())
        assert torch.equal(data.test_images.flatten(1), torch.from_numpy(batch["data"]))
        assert data.image_shape == (3, 32, 32) and len(data.class_names) == data.num_classes


@pytest.mark.parametrize(
    ("fmt", "missing"),
    [("mnist", "t10k-labels-idx1-ubyte"), ("cifar10", "data_batch_4"), ("cifar100", "meta")],
)
def test_an_absent_file_is_still_not_found(tmp_path, fmt, missing):
    folder = WRITERS[fmt](tmp_path)
    (folder / missing).unlink()
    with pytest.raises(DataNotFoundError, match=f"not found in {folder}/ .*missing {missing}"):
        load(fmt, tmp_path)


def test_a_torchvision_folder_holding_unreadable_files_is_damaged_not_missing(tmp_path):
    source = torchvision_source(
        "tiny_fashion", "FashionMNIST", "FashionMNIST", 10, (1, 28, 28), (0.5,), (0.5,)
    )
    with pytest.raises(DataNotFoundError, match="FashionMNIST not found"):
        source.load(str(tmp_path), False)
    (tmp_path / "FashionMNIST" / "raw").mkdir(parents=True)
    (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"")
    before = snapshot(tmp_path)
    with pytest.raises(DamagedDataError, match=f"{tmp_path / 'FashionMNIST'}: present, but torchvision"):
        source.load(str(tmp_path), False)
    assert snapshot(tmp_path) == before


# ---- what every source's data must be: one shape, labels in range -----------------------------------
def images(count: int, size: int, channels: int = 1) -> torch.Tensor:
    return torch.zeros(count, channels, size, size, dtype=torch.uint8)


@pytest.mark.parametrize(
    ("test_images", "words"),
    [
        (images(4, 5), "train images are 1x4x4 but test images are 1x5x5"),
        (images(4, 4, 3), "test images are 3x4x4"),
    ],
)
def test_train_and_test_images_of_different_shapes_are_refused_naming_both(test_images, words):
    labels = torch.arange(4) % 2
    with pytest.raises(DamagedDataError, match=words):
        ImageData("odd", images(4, 4), labels, test_images, labels, 2, (0.5,), (0.5,))


def test_labels_outside_the_class_count_are_refused_for_any_source():
    labels = torch.tensor([0, 1, 2, 1])
    with pytest.raises(DamagedDataError, match=r"odd \(test labels\): 1 labels outside 0..1 \(the first: 2"):
        ImageData("odd", images(4, 4), labels % 2, images(4, 4), labels, 2, (0.5,), (0.5,))


# ---- split benchmarks that would drop classes -----------------------------------------------------
def test_a_split_that_drops_a_class_names_it_and_class_order_makes_it_deliberate():
    with pytest.raises(ConfigError) as error:
        SplitBenchmark("digits", num_tasks=3, classes_per_task=3)
    message = str(error.value)
    assert "would drop class(es) [9] of digits" in message
    assert "benchmark.classes_per_task=2 with benchmark.num_tasks=5" in message
    assert "benchmark.class_order=[0,1,2,3,4,5,6,7,8]" in message
    deliberate = SplitBenchmark("digits", num_tasks=3, classes_per_task=3, class_order=list(range(9)))
    assert [deliberate.classes_of(t) for t in range(3)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    # listing more classes than the tasks can hold drops the last ones again: refused
    with pytest.raises(
        ConfigError, match=r"would drop class\(es\) \[3\] .*the 10 classes of benchmark.class_order"
    ):
        SplitBenchmark("digits", num_tasks=3, classes_per_task=3, class_order=[9, 8, 7, 6, 5, 4, 2, 1, 0, 3])
    # a shorter sequence is the start of the full one: accepted
    assert SplitBenchmark("digits", num_tasks=2, classes_per_task=2).classes_of(1) == [2, 3]


def test_a_shuffled_split_names_the_classes_its_seed_would_drop():
    with pytest.raises(ConfigError) as error:
        SplitBenchmark("digits", num_tasks=3, classes_per_task=3, shuffle_classes=True, seed=3)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    assert f"would drop class(es) [{order[9]}] of digits (drawn from the seed)" in str(error.value)


# ---- the data fingerprint -------------------------------------------------------------------------
@pytest.fixture
def editable_source():
    """``editable``: a source whose data is ``DATA[root]``, so each root is a separately cached data set."""
    data: dict[str, ImageData] = {}
    source = register_source(DataSource("editable", 3, (1, 4, 4), lambda root, download: data[root]))
    yield data
    SOURCES.pop(source.name)


def tiny_data(count: int, size: int = 4, channels: int = 1) -> ImageData:
    generator = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (count, channels, size, size), generator=generator, dtype=torch.uint8)
    labels = torch.arange(count) % 3
    return ImageData("editable", train, labels, train[:50].clone(), labels[:50].clone(), 3, (0.5,), (0.5,))


def fingerprint(root: str) -> str:
    return SplitBenchmark("editable", num_tasks=1, classes_per_task=3, root=root).data_fingerprint()


def test_the_fingerprint_is_stable_and_sees_labels_sampled_images_and_sizes(editable_source):
    base = tiny_data(5000)
    editable_source["a"], editable_source["b"] = base, tiny_data(5000)
    assert fingerprint("a") == fingerprint("b") and len(fingerprint("a")) == 16
    relabelled = tiny_data(5000)
    relabelled.train_labels[4321] = (relabelled.train_labels[4321] + 1) % 3
    first_pixel, last_pixel = tiny_data(5000), tiny_data(5000)
    first_pixel.train_images[0, 0, 0, 0] ^= 1
    last_pixel.test_images[-1, 0, 3, 3] ^= 1
    cut = tiny_data(4999)
    for root, data in (
        ("relabelled", relabelled),
        ("first", first_pixel),
        ("last", last_pixel),
        ("cut", cut),
    ):
        editable_source[root] = data
        assert fingerprint(root) != fingerprint("a"), root
    # not covered, as its docstring says: an image between two sampled ones (5000 images, 2048 sampled)
    unsampled = tiny_data(5000)
    unsampled.train_images[1, 0, 0, 0] ^= 1
    editable_source["unsampled"] = unsampled
    assert fingerprint("unsampled") == fingerprint("a")


def test_the_fingerprint_costs_milliseconds_on_a_cifar_sized_data_set():
    benchmark = SplitBenchmark("digits", num_tasks=5)
    images = torch.zeros(50_000, 3, 32, 32, dtype=torch.uint8)
    labels = torch.arange(50_000) % 10
    benchmark.data = ImageData(
        "big", images, labels, images[:10_000], labels[:10_000], 10, (0.5,) * 3, (0.5,) * 3
    )
    start = time.perf_counter()
    benchmark.data_fingerprint()
    assert time.perf_counter() - start < 0.5  # hashing all 180 MB would take seconds


# ---- through the real CLI ---------------------------------------------------------------------------
@pytest.mark.slow
def test_clrun_names_the_damaged_gz_and_leaves_the_data_folder_alone(tmp_path):
    data = tmp_path / "data"
    raw = write_mnist(data, packed=True)
    (raw / f"{TI}.gz").write_bytes(b"not gzip")
    before = snapshot(data)
    clrun = str(Path(sys.executable).with_name("clrun"))
    done = subprocess.run(
        [clrun, "benchmark=split_mnist", f"benchmark.root={data}", f"hydra.run.dir={tmp_path / 'out'}"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"{raw / TI}.gz: named .gz but not a gzip file" in output, output[-3000:]
    assert "MNIST not found" not in output and "Traceback" not in output
    assert snapshot(data) == before
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


# ---- clta's torchvision data sets (SVHN's .mat files) -----------------------------------------
@pytest.mark.parametrize("content", [b"", b"MATLAB 5.0 MAT-file" + b"\0" * 50], ids=["empty", "truncated"])
def test_a_damaged_clta_data_set_is_named_as_damaged_with_how_to_get_it(tmp_path, content):
    from clcore.clta.vision_datasets import Preprocess, VisionTaskSource

    root = tmp_path / "svhn"
    root.mkdir()
    for name in ("train_32x32.mat", "test_32x32.mat"):
        (root / name).write_bytes(content)
    before = sorted((p.name, p.read_bytes()) for p in root.iterdir())
    source = VisionTaskSource(
        name="SVHN",
        dataset_class="torchvision.datasets.SVHN",
        root=str(root),
        required=["train_32x32.mat", "test_32x32.mat"],
        templates=["{}"],
        classnames=[str(d) for d in range(10)],
        train_kwargs={"split": "train"},
        test_kwargs={"split": "test"},
        how_to_get="torchvision.datasets.SVHN(..., download=True)",
    )
    assert source.missing() == []
    with pytest.raises(DamagedDataError) as damaged:
        source.build(Preprocess(train=lambda image: image, eval=lambda image: image))
    message = str(damaged.value)
    assert str((root / "train_32x32.mat").resolve()) in message
    assert "present but SVHN cannot read them" in message and "download=True" in message
    assert sorted((p.name, p.read_bytes()) for p in root.iterdir()) == before
