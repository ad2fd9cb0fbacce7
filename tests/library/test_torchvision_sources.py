"""The named sources beyond MNIST and CIFAR, any torchvision data set by name, and streaming.

Every data set is written as tiny files in its real on-disk format and torchvision's layout (idx
files for the MNIST family, SVHN's MATLAB .mat files, GTSRB's folders of .ppm images with its test
CSV), then read through the real loaders: clcore's readers, or torchvision's classes. No loader is
mocked. A data set beyond the memory budget is streamed and must give the batches of the same data
held in memory.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clcore.benchmarks import DamagedDataError, DataNotFoundError, PermutedBenchmark, SplitBenchmark
from clcore.benchmarks.sources import (
    EMNIST_BALANCED_NAMES,
    FASHION_MNIST_NAMES,
    SOURCES,
    load_source,
    resolve_source,
)
from clcore.benchmarks.streamed import StreamedImages
from clcore.benchmarks.torchvision_sources import channel_statistics, parse_name
from clcore.config_rules import ConfigError

# ---- tiny data sets in the real formats -----------------------------------------------------------
COUNTS = {"train": 24, "test": 12}


def idx_bytes(array: np.ndarray) -> bytes:
    return (
        struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    )


def idx_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 28, 28), dtype=np.uint8)


def write_idx_set(
    raw: Path,
    names: tuple[str, str, str, str],
    num_classes: int,
    first_label: int = 0,
    packed: bool = False,
    counts: dict[str, int] = COUNTS,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Four idx files under ``raw`` (train images, train labels, test images, test labels); returns
    the arrays written, per split, labels as stored in the files."""
    raw.mkdir(parents=True, exist_ok=True)
    written = {}
    for index, split in enumerate(("train", "test")):
        count = counts[split]
        images = idx_images(count, seed=index)
        labels = (np.arange(count) % num_classes + first_label).astype(np.uint8)
        for name, array in zip(names[2 * index : 2 * index + 2], (images, labels), strict=True):
            data = idx_bytes(array)
            if packed:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (raw / name).write_bytes(data)
        written[split] = (images, labels)
    return written


MNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def emnist_names(split: str) -> tuple[str, str, str, str]:
    return tuple(
        f"emnist-{split}-{part}-{kind}-ubyte"
        for part in ("train", "test")
        for kind in ("images-idx3", "labels-idx1")
    )


# source -> (folder under root, file names, classes, first label in the files, transposed)
IDX_SOURCES = {
    "fashion_mnist": ("FashionMNIST", MNIST_NAMES, 10, 0, False),
    "kmnist": ("KMNIST", MNIST_NAMES, 10, 0, False),
    "emnist_balanced": ("EMNIST", emnist_names("balanced"), 47, 0, True),
    "emnist_letters": ("EMNIST", emnist_names("letters"), 26, 1, True),
}


def write_idx_source(root: Path, source: str, packed: bool = False) -> dict:
    folder, names, classes, first, _ = IDX_SOURCES[source]
    return write_idx_set(root / folder / "raw", names, classes, first, packed)


def write_svhn(root: Path, counts: dict[str, int] = COUNTS) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``train_32x32.mat`` and ``test_32x32.mat`` as the official files lay them out: ``X`` uint8
    ``[32, 32, 3, N]``, ``y`` ``[N, 1]`` with the digit 0 labelled 10."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for index, split in enumerate(("train", "test")):
        count = counts[split]
        images = np.random.default_rng(10 + index).integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
        labels = (np.arange(count) % 10 + 1).astype(np.uint8).reshape(-1, 1)  # 1..10
        savemat(root / f"{split}_32x32.mat", {"X": images, "y": labels})
        written[split] = (images, labels)
    return written


def write_gtsrb(root: Path, classes: int = 4, per_class: int = 5, test: int = 10) -> Path:
    """``root/gtsrb/`` in torchvision's layout: ``GTSRB/Training/<00000..>/*.ppm`` (images of
    varying sizes, as GTSRB's are), ``GTSRB/Final_Test/Images/*.ppm`` and ``GT-final_test.csv``."""
    base = root / "gtsrb"
    rng = np.random.default_rng(3)
    for label in range(classes):
        folder = base / "GTSRB" / "Training" / f"{label:05d}"
        folder.mkdir(parents=True)
        (folder / f"GT-{label:05d}.csv").write_text(
            "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
        )
        for index in range(per_class):
            side = int(rng.integers(15, 60))
            pixels = rng.integers(0, 256, (side, side + index, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"00000_{index:05d}.ppm")
    images = base / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for index in range(test):
        pixels = rng.integers(0, 256, (20 + index, 25, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{index:05d}.ppm")
        rows.append(f"{index:05d}.ppm;25;{20 + index};5;5;20;20;{index % classes}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return base


def fashion_root(tmp_path: Path) -> Path:
    root = tmp_path / "fashion"
    write_idx_source(root, "fashion_mnist")
    return root


# ---- the MNIST family, read by clcore -------------------------------------------------------------
@pytest.mark.parametrize("packed", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("source", list(IDX_SOURCES))
def test_mnist_family_sources_read_their_idx_files(tmp_path, source, packed):
    written = write_idx_source(tmp_path, source, packed)
    data = load_source(source, str(tmp_path))
    _, _, classes, first, transposed = IDX_SOURCES[source]
    entry = SOURCES[source]
    assert (
        (data.num_classes, data.image_shape)
        == (entry.num_classes, entry.image_shape)
        == (classes, (1, 28, 28))
    )
    for split in ("train", "test"):
        images, labels = written[split]
        expected = torch.from_numpy(images.transpose(0, 2, 1) if transposed else images).unsqueeze(1)
        assert torch.equal(getattr(data, f"{split}_images"), expected)
        assert getattr(data, f"{split}_labels").tolist() == (labels.astype(int) - first).tolist()
    assert len(data.class_names) == classes and len(data.mean) == len(data.std) == 1


def test_emnist_is_transposed_upright_and_letters_number_from_zero(tmp_path):
    raw = tmp_path / "EMNIST" / "raw"
    write_idx_set(raw, emnist_names("letters"), 26, first_label=1)
    # A vertical bar in the file (stored transposed) is a horizontal bar once upright.
    bar = np.zeros((24, 28, 28), np.uint8)
    bar[:, :, 3] = 255
    (raw / "emnist-letters-train-images-idx3-ubyte").write_bytes(idx_bytes(bar))
    data = load_source("emnist_letters", str(tmp_path))
    assert bool((data.train_images[0, 0, 3] == 255).all()) and int(data.train_images[0, 0, :, 3].sum()) == 255
    assert data.train_labels.tolist() == list(range(24))  # files 1..24 -> 0..23
    assert data.class_names[:3] == ("a", "b", "c")
    assert EMNIST_BALANCED_NAMES[9:11] == ("9", "A") and EMNIST_BALANCED_NAMES[-1] == "t"


def test_an_emnist_letters_file_with_label_0_is_damaged(tmp_path):
    raw = tmp_path / "EMNIST" / "raw"
    write_idx_set(raw, emnist_names("letters"), 26, first_label=1)
    labels = np.full(24, 5, np.uint8)
    labels[4] = 0  # torchvision's empty "N/A" class: no letters file holds it
    (raw / "emnist-letters-train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(DamagedDataError, match=r"1 labels outside 1\.\.26 \(the first: 0 at position 4\)"):
        load_source("emnist_letters", str(tmp_path))


# ---- missing data names what was looked for and how to get it ------------------------------------
@pytest.mark.parametrize(
    ("source", "named"),
    [
        ("fashion_mnist", ["Fashion-MNIST not found", "FashionMNIST/raw", "train-images-idx3-ubyte"]),
        ("kmnist", ["KMNIST not found", "KMNIST/raw", "t10k-labels-idx1-ubyte"]),
        (
            "emnist_balanced",
            ["EMNIST (balanced) not found", "EMNIST/raw", "emnist-balanced-train-images-idx3-ubyte"],
        ),
        ("emnist_letters", ["EMNIST (letters) not found", "emnist-letters-test-labels-idx1-ubyte"]),
        ("svhn", ["SVHN not found", "train_32x32.mat", "test_32x32.mat"]),
        ("gtsrb", ["GTSRB not found", "gtsrb/GTSRB/Training", "gtsrb/GT-final_test.csv"]),
    ],
)
def test_missing_data_names_the_files_and_how_to_get_them(tmp_path, source, named):
    with pytest.raises(DataNotFoundError) as error:
        load_source(source, str(tmp_path / "empty"))
    message = str(error.value)
    for words in (*named, str(tmp_path / "empty"), "benchmark.root", "benchmark.download=true"):
        assert words in message, (words, message)


def test_a_split_benchmark_of_a_named_source_is_judged_before_loading(tmp_path):
    with pytest.raises(ConfigError, match="= 12 classes, but fashion_mnist has 10"):
        SplitBenchmark("fashion_mnist", num_tasks=6, classes_per_task=2, root=str(tmp_path))
    with pytest.raises(ConfigError, match=r"would drop class\(es\) \[46\] of emnist_balanced"):
        SplitBenchmark("emnist_balanced", num_tasks=23, classes_per_task=2, root=str(tmp_path))


# ---- SVHN, read by clcore from its .mat files ----------------------------------------------------
def test_svhn_reads_the_mat_layout_and_labels_ten_as_zero(tmp_path):
    written = write_svhn(tmp_path)
    data = load_source("svhn", str(tmp_path))
    assert data.image_shape == (3, 32, 32) and data.num_classes == 10
    images, labels = written["train"]
    assert torch.equal(data.train_images, torch.from_numpy(images.transpose(3, 2, 0, 1)))
    assert data.train_labels[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert set(data.test_labels.tolist()) == set(range(10))


def _mat_without_y(path: Path) -> None:
    from scipy.io import savemat

    savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8)})


def _mat_of_wrong_size(path: Path) -> None:
    from scipy.io import savemat

    savemat(path, {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1), np.uint8)})


def _mat_with_label(value: int):
    def write(path: Path) -> None:
        from scipy.io import savemat

        savemat(path, {"X": np.zeros((32, 32, 3, 3), np.uint8), "y": np.array([[1], [value], [2]], np.uint8)})

    return write


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(p.read_bytes()[:-200]), "not a readable MATLAB .mat file, or truncated"),
        (lambda p: p.write_text("<html>404 Not Found</html>"), "not a readable MATLAB .mat file"),
        (_mat_without_y, "holds the variables ['X'], not SVHN's 'X' (images) and 'y' (labels)"),
        (_mat_of_wrong_size, "not uint8 32x32x3xN"),
        (_mat_with_label(11), "labels outside 1..10 (the first: 11 at position 1)"),
    ],
)
def test_a_damaged_svhn_file_is_named_with_the_damage(tmp_path, damage, words):
    write_svhn(tmp_path)
    damage(tmp_path / "test_32x32.mat")
    with pytest.raises(DamagedDataError) as error:
        load_source("svhn", str(tmp_path))
    assert str(tmp_path / "test_32x32.mat") in str(error.value) and words in str(error.value)


# ---- GTSRB and any torchvision data set, read by torchvision --------------------------------------
def test_gtsrb_is_resized_to_32x32_with_its_published_statistics(tmp_path):
    write_gtsrb(tmp_path)
    data = load_source("gtsrb", str(tmp_path))
    assert data.image_shape == (3, 32, 32) and data.num_classes == 43 and len(data.class_names) == 43
    assert (len(data.train_labels), len(data.test_labels)) == (20, 10)
    assert data.train_labels.tolist() == [label for label in range(4) for _ in range(5)]
    assert data.test_labels.tolist() == [index % 4 for index in range(10)]
    first = Image.open(tmp_path / "gtsrb" / "GTSRB" / "Training" / "00000" / "00000_00000.ppm")
    expected = torch.from_numpy(np.array(first.convert("RGB").resize((32, 32), Image.BILINEAR))).permute(
        2, 0, 1
    )
    assert torch.equal(data.train_images[0], expected)
    assert data.mean == (0.3403, 0.3121, 0.3214) and data.class_names[14] == "stop"


def test_any_torchvision_data_set_by_name_reads_what_clcore_reads(tmp_path):
    """``torchvision:FashionMNIST`` (torchvision's reader) and ``fashion_mnist`` (clcore's) agree."""
    root = fashion_root(tmp_path)
    named, generic = (
        load_source("fashion_mnist", str(root)),
        load_source("torchvision:FashionMNIST", str(root)),
    )
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(named, field), getattr(generic, field)), field
    assert generic.num_classes == 10 and generic.class_names == FASHION_MNIST_NAMES
    # the statistics are measured on its training images
    pixels = named.train_images.double() / 255
    assert generic.mean == pytest.approx((float(pixels.mean()),), abs=1e-4)
    assert generic.std == pytest.approx((float(pixels.std(unbiased=False)),), abs=1e-4)
    assert "torchvision:FashionMNIST" not in SOURCES  # built per root, never registered


def test_a_torchvision_name_rules_the_split_from_its_data(tmp_path):
    root = fashion_root(tmp_path)
    with pytest.raises(ConfigError, match="= 12 classes, but torchvision:FashionMNIST has 10"):
        SplitBenchmark("torchvision:FashionMNIST", num_tasks=6, classes_per_task=2, root=str(root))
    split = SplitBenchmark("torchvision:FashionMNIST", num_tasks=5, classes_per_task=2, root=str(root))
    assert split.classes_of(4) == [8, 9] and split.image_shape == (1, 28, 28)
    assert split.class_names_of(0) == ["T-shirt/top", "Trouser"]


@pytest.mark.parametrize(
    ("source", "root", "words"),
    [
        ("torchvision:FashionMNIST", None, "benchmark.root is not set: source 'torchvision:FashionMNIST'"),
        (
            "torchvision:FashonMNIST",
            "data",
            "has no data set class 'FashonMNIST' (did you mean torchvision:FashionMNIST",
        ),
        ("torchvision:KMNIST", "empty", "found no data set under"),
        ("torchvision:KMNIST/size:0", "empty", "size:0 is not size:<S> or size:<H>x<W>"),
        ("torchvision:KMNIST/colour", "empty", "option 'colour' is not <key>:<value>"),
        ("torchvision:KMNIST/shape:3", "empty", "cannot be built with the options {'shape': 3}"),
        ("torchvision:Caltech101", "empty", "takes neither train= nor split="),
    ],
)
def test_a_torchvision_name_that_cannot_be_used_says_why(tmp_path, source, root, words):
    root = None if root is None else str(tmp_path / root)
    with pytest.raises(ConfigError) as error:
        SplitBenchmark(source, num_tasks=2, root=root)
    assert words in str(error.value), str(error.value)


def test_a_missing_torchvision_data_set_names_the_folder_and_the_download(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        resolve_source("torchvision:KMNIST", str(tmp_path))
    message = str(error.value)
    assert str(tmp_path) in message and "benchmark.download=true" in message and "KMNIST" in message


def test_torchvision_names_parse_their_options():
    spec = parse_name("torchvision:EMNIST/split:letters/size:16x20/channels:3")
    assert (spec.class_name, spec.size, spec.channels, spec.options) == (
        "EMNIST",
        (16, 20),
        3,
        (("split", "letters"),),
    )
    assert parse_name("torchvision:Flowers102/size:64").size == (64, 64)


def test_images_of_different_sizes_need_a_size(tmp_path):
    write_gtsrb(tmp_path)
    with pytest.raises(DamagedDataError, match=r"the images differ in size; name the source with /size:<S>"):
        load_source("torchvision:GTSRB", str(tmp_path))
    data = load_source("torchvision:GTSRB/size:8/channels:1", str(tmp_path))
    assert data.image_shape == (1, 8, 8) and data.num_classes == 4  # 1 + the largest label
    assert data.class_names == ("0", "1", "2", "3")


def test_channel_statistics_are_per_channel_over_every_pixel():
    images = torch.zeros(2, 2, 2, 2, dtype=torch.uint8)
    images[:, 1] = 255
    images[0, 0] = 255
    assert channel_statistics(images) == ((0.5, 1.0), (0.5, 0.0))


# ---- the memory budget: streamed from disk, the same batches ---------------------------------------
def all_batches(benchmark, task_id: int) -> dict[str, list]:
    benchmark.setup_task(task_id)
    benchmark.test_tasks = list(range(task_id + 1))
    out = {"train": [], "train_again": [], "val": [], "test": []}
    train = benchmark.train_dataloader()
    for key in ("train", "train_again"):  # two epochs: the second is reshuffled
        out[key] = [(x.clone(), y.clone(), t) for x, y, t in train]
    out["val"] = [(x.clone(), y.clone(), t) for x, y, t in benchmark.val_dataloader()]
    out["test"] = [
        [(x.clone(), y.clone(), t) for x, y, t in loader] for loader in benchmark.test_dataloader()
    ]
    benchmark.train_tasks = list(range(task_id + 1))  # joint: the union of the tasks, shuffled together
    out["joint"] = [(x.clone(), y.clone(), t.clone()) for x, y, t in benchmark.train_dataloader()]
    return out


def assert_same_batches(first, second) -> None:
    if isinstance(first, dict):
        assert first.keys() == second.keys()
        for key in first:
            assert_same_batches(first[key], second[key])
    elif isinstance(first, list):
        assert len(first) == len(second)
        for a, b in zip(first, second, strict=True):
            assert_same_batches(a, b)
    elif isinstance(first, tuple):
        for a, b in zip(first, second, strict=True):
            assert_same_batches(a, b)
    elif isinstance(first, torch.Tensor):
        assert first.dtype == second.dtype and torch.equal(first, second)
    else:
        assert first == second


@pytest.mark.parametrize("workers", [0, 2])
def test_a_streamed_data_set_gives_the_batches_of_the_in_memory_path(tmp_path, workers):
    write_gtsrb(tmp_path, classes=4, per_class=9, test=12)
    options = dict(
        num_tasks=2, classes_per_task=2, shuffle_classes=True, seed=3, batch_size=4, eval_batch_size=5
    )
    source, root = "torchvision:GTSRB/size:12", str(tmp_path)
    in_memory = SplitBenchmark(source, root=root, **options)
    streamed = SplitBenchmark(source, root=root, memory_budget_gb=1e-6, stream_workers=workers, **options)
    assert isinstance(in_memory.load().train_images, torch.Tensor)
    assert isinstance(streamed.load().train_images, StreamedImages)
    assert streamed.class_order == in_memory.class_order
    for task_id in (0, 1):
        assert_same_batches(all_batches(streamed, task_id), all_batches(in_memory, task_id))
    # the per-batch transform is the same code on the same uint8 batch
    images = next(iter(streamed.train_dataloader()))[0]
    assert torch.equal(streamed.prepare_batch(images, 0), in_memory.prepare_batch(images, 0))
    assert streamed.data_fingerprint() == in_memory.data_fingerprint()
    assert streamed.data.mean == pytest.approx(in_memory.data.mean, abs=1e-4)  # every image < STATS_SAMPLE


def test_a_streamed_permuted_benchmark_matches_and_is_never_put_on_a_device(tmp_path):
    root = fashion_root(tmp_path)
    options = dict(num_tasks=2, seed=1, batch_size=7)
    in_memory = PermutedBenchmark("torchvision:FashionMNIST", root=str(root), **options)
    streamed = PermutedBenchmark(
        "torchvision:FashionMNIST", root=str(root), memory_budget_gb=1e-6, stream_workers=0, **options
    )
    assert_same_batches(all_batches(streamed, 1), all_batches(in_memory, 1))
    on_device = PermutedBenchmark(
        "torchvision:FashionMNIST", root=str(root), memory_budget_gb=1e-6, data_device="meta", **options
    )
    with pytest.raises(
        ValueError, match="streamed from disk .* cannot be held on meta: unset benchmark.data_device"
    ):
        on_device.load()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"memory_budget_gb": 0}, "benchmark.memory_budget_gb=0: must be a number > 0"),
        ({"stream_workers": -1}, "benchmark.stream_workers=-1: must be an integer >= 0"),
    ],
)
def test_the_memory_options_are_checked(options, words):
    with pytest.raises(ConfigError, match=words):
        SplitBenchmark("digits", num_tasks=2, **options)


# ---- the packaged configs --------------------------------------------------------------------------
NEW_CONFIGS = {
    "permuted_fashion_mnist": ("fashion_mnist", 10, None),
    "split_fashion_mnist": ("fashion_mnist", 5, 2),
    "split_kmnist": ("kmnist", 5, 2),
    "split_emnist_balanced": ("emnist_balanced", 23, 2),
    "split_emnist_letters": ("emnist_letters", 13, 2),
    "split_svhn": ("svhn", 5, 2),
    "split_gtsrb": ("gtsrb", 7, 6),
}


@pytest.mark.parametrize("name", list(NEW_CONFIGS))
def test_each_new_benchmark_config_passes_its_rules_without_loading(make_config, tmp_path, name):
    from omegaconf import OmegaConf

    from clcore.clrun.checks import _benchmark_problems, _located_groups

    cfg = make_config(f"benchmark={name}", f"benchmark.root={tmp_path / 'nothing'}")
    plain = OmegaConf.to_container(cfg, resolve=True)
    located, _ = _located_groups(plain)
    assert _benchmark_problems(plain, located["benchmark"]) == []
    source, num_tasks, per_task = NEW_CONFIGS[name]
    assert (cfg.benchmark.source, cfg.benchmark.num_tasks, cfg.benchmark.get("classes_per_task")) == (
        source,
        num_tasks,
        per_task,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "folder"), [("split_fashion_mnist", "FashionMNIST"), ("split_kmnist", "KMNIST")]
)
def test_clrun_runs_on_the_four_files_in_torchvisions_layout(make_config, tmp_path, name, folder):
    from clcore.clrun.task_loop import run_sequence

    root = tmp_path / "data"
    # as torchvision downloads them: .gz beside nothing else
    write_idx_set(root / folder / "raw", MNIST_NAMES, 10, packed=True, counts={"train": 200, "test": 50})
    results = run_sequence(make_config(f"benchmark={name}", f"benchmark.root={root}", "trainer.max_epochs=1"))
    assert results.summary()["tasks_done"] == 5
