"""Benchmarks: reproducible tasks, per-batch transforms as tensor ops, clear errors."""

from pathlib import Path

import pytest
import torch

from clcore.benchmarks import DataNotFoundError, PermutedBenchmark, RotatedBenchmark, SplitBenchmark
from clcore.benchmarks.sources import SOURCES, DataSource, load_mnist, load_source, register_source
from clcore.benchmarks.tensor_loader import TensorBatchLoader
from tests.conftest import SHARED_MNIST
from tests.helpers import TinyLoader


def first_test_batch(benchmark, task_id):
    benchmark.setup_task(task_id)
    benchmark.test_tasks = [task_id]
    images, labels, t = next(iter(benchmark.test_dataloader()[0]))
    return images, benchmark.transform_batch(images, t), labels


def test_permutations_come_from_the_seed():
    a = PermutedBenchmark("digits", num_tasks=3, seed=7)
    b = PermutedBenchmark("digits", num_tasks=3, seed=7)
    c = PermutedBenchmark("digits", num_tasks=3, seed=8)
    assert torch.equal(a.permutations, b.permutations)
    assert not torch.equal(a.permutations, c.permutations)
    assert not torch.equal(a.permutations[0], a.permutations[1])
    assert sorted(a.permutations[2].tolist()) == list(range(64))


def test_permuted_batch_is_the_permuted_normalised_image():
    benchmark = PermutedBenchmark("digits", num_tasks=2, seed=0)
    raw, x, _ = first_test_batch(benchmark, 1)
    mean, std = benchmark.data.mean[0], benchmark.data.std[0]
    expected = ((raw.float() / 255 - mean) / std).flatten(1)[:, benchmark.permutations[1]]
    assert torch.allclose(x.flatten(1), expected, atol=1e-6)
    assert x.dtype == torch.float32 and raw.dtype == torch.uint8


def test_unpermuted_first_task_option():
    benchmark = PermutedBenchmark("digits", num_tasks=2, seed=0, permute_first_task=False)
    assert torch.equal(benchmark.permutations[0], torch.arange(64))


def test_split_tasks_have_disjoint_classes_and_local_labels():
    benchmark = SplitBenchmark("digits", num_tasks=5, classes_per_task=2, seed=0)
    benchmark.load()
    assert [benchmark.classes_of(t) for t in range(5)] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    split = benchmark.task_split("test", 3)
    base_labels = benchmark._split_labels["test"]
    assert split.labels.unique().tolist() == [0, 1]
    assert len(split.labels) == int(((base_labels == 6) | (base_labels == 7)).sum())


def test_split_class_order_from_seed_is_reproducible():
    orders = []
    for seed in (3, 3, 4):
        benchmark = SplitBenchmark("digits", num_tasks=2, classes_per_task=2, shuffle_classes=True, seed=seed)
        benchmark.load()
        orders.append(benchmark.class_order)
    assert orders[0] == orders[1] != orders[2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_tasks": 6, "classes_per_task": 2}, "= 12 classes, but digits has 10"),
        ({"num_tasks": 0, "classes_per_task": 2}, "num_tasks=0: must be an integer >= 1"),
        ({"num_tasks": 2, "classes_per_task": 0}, "classes_per_task=0: must be an integer >= 1"),
        ({"num_tasks": 2, "classes_per_task": 2, "class_order": [0, 0, 1, 2]}, "distinct classes"),
        ({"num_tasks": 2, "classes_per_task": 2, "batch_size": 0}, "batch_size=0: must be an integer >= 1"),
    ],
)
def test_split_limits_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SplitBenchmark("digits", **kwargs).load()


def test_train_validation_split_is_seeded_and_disjoint():
    a = PermutedBenchmark("digits", num_tasks=1, seed=1, val_fraction=0.2)
    b = PermutedBenchmark("digits", num_tasks=1, seed=1, val_fraction=0.2)
    a.load(), b.load()
    assert torch.equal(a._split_images["val"], b._split_images["val"])
    n_train, n_val = len(a._split_labels["train"]), len(a._split_labels["val"])
    assert n_val == round(0.2 * (n_train + n_val))


def test_rotation_by_zero_is_identity_and_others_rotate():
    benchmark = RotatedBenchmark("digits", num_tasks=4, max_angle=360.0)
    assert benchmark.angles == [0.0, 90.0, 180.0, 270.0]
    raw, x0, _ = first_test_batch(benchmark, 0)
    _, x2, _ = first_test_batch(benchmark, 2)
    # 180 degrees on a square image is an exact flip of both axes
    assert torch.allclose(x2, torch.flip(x0, dims=(-2, -1)), atol=1e-5)


def test_loader_shards_are_disjoint_and_cover_the_data():
    images, labels = torch.arange(10).view(10, 1, 1, 1), torch.arange(10)
    seen = []
    for rank in range(2):
        loader = TensorBatchLoader(
            images, labels, 0, batch_size=3, shuffle=True, seed=5, rank=rank, world_size=2
        )
        assert len(loader) == 2
        seen += [int(v) for _, y, _ in loader for v in y]
    assert sorted(seen) == list(range(10))


def test_loader_epochs_reshuffle_reproducibly():
    images, labels = torch.zeros(8, 1, 1, 1), torch.arange(8)
    first = TensorBatchLoader(images, labels, 0, batch_size=8, shuffle=True, seed=1)
    second = TensorBatchLoader(images, labels, 0, batch_size=8, shuffle=True, seed=1)
    epochs = [next(iter(first))[1].tolist() for _ in range(2)]
    assert epochs[0] != epochs[1]
    assert next(iter(second))[1].tolist() == epochs[0]


def test_missing_mnist_names_the_files_and_the_fix(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        load_mnist(tmp_path)
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "benchmark.root" in message and "download=true" in message


def test_missing_cifar_names_the_folder(tmp_path):
    benchmark = SplitBenchmark("cifar100", num_tasks=10, classes_per_task=10, root=str(tmp_path))
    with pytest.raises(DataNotFoundError, match="cifar-100-python"):
        benchmark.load()


@pytest.mark.skipif(
    not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason="shared MNIST files not present"
)
def test_real_mnist_files_load_in_torchvision_layout(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).parents[2] / "scripts" / "mnist_from_test_set.py"
    subprocess.run(
        [sys.executable, str(script), "--src", str(SHARED_MNIST), "--dst", str(tmp_path), "--train", "9000"],
        check=True,
    )
    data = load_mnist(tmp_path)
    assert data.train_images.shape == (9000, 1, 28, 28) and data.test_images.shape == (1000, 1, 28, 28)
    assert data.train_images.dtype == torch.uint8
    assert set(data.test_labels.tolist()) == set(range(10))


# ---- the data-source registry: a new data set is one entry ------------------------------------------
def test_a_registered_source_serves_every_benchmark_and_its_class_count_rules_the_split(tiny_source):
    with pytest.raises(ValueError, match="= 8 classes, but tiny6 has 6"):
        SplitBenchmark("tiny6", num_tasks=4, classes_per_task=2)
    assert tiny_source.load.calls == 0  # judged from the entry: nothing was loaded
    split = SplitBenchmark("tiny6", num_tasks=3, classes_per_task=2, val_fraction=0.0)
    assert split.classes_of(2) == [4, 5] and split.image_shape == (1, 4, 4)
    permuted = PermutedBenchmark("tiny6", num_tasks=2)
    assert permuted.num_classes_of(1) == 6
    assert tiny_source.load.calls == 1  # loaded once for both benchmarks


def test_a_source_whose_data_differs_from_its_entry_is_refused():
    liar = register_source(DataSource("liar", 5, (1, 4, 4), TinyLoader("liar", 6), needs_root=False))
    try:
        with pytest.raises(ValueError, match="registered with 5 classes .* returned 6 classes"):
            load_source("liar")
    finally:
        SOURCES.pop(liar.name)


def test_a_source_name_is_registered_once_and_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="'digits' is registered already"):
        register_source(DataSource("digits", 3, (1, 8, 8), TinyLoader("digits", 3), needs_root=False))
    with pytest.raises(
        ValueError, match="benchmark.source='imagenet' is unknown: choose one of digits, mnist"
    ):
        SplitBenchmark("imagenet", num_tasks=2)
    with pytest.raises(ValueError, match="benchmark.root is not set: source 'cifar10'"):
        SplitBenchmark("cifar10", num_tasks=2)


def test_digits_cache_holds_exactly_what_scikit_learn_splits(tmp_path, monkeypatch):
    """The cached digits are bit-identical to a fresh load, and a damaged cache is rebuilt."""
    import subprocess
    import sys

    from clcore.benchmarks.sources import _digits_from_sklearn, digits_cache_path, load_digits

    monkeypatch.setenv("CLCORE_CACHE", str(tmp_path))
    fresh = _digits_from_sklearn(0.2)
    first, cached = load_digits(), load_digits()
    assert digits_cache_path(0.2).is_file()
    for data in (first, cached):
        for field in ("train_images", "train_labels", "test_images", "test_labels"):
            assert torch.equal(getattr(data, field), getattr(fresh, field))
        assert (data.mean, data.std, data.class_names) == (fresh.mean, fresh.std, fresh.class_names)
    # A later process reads the cache and never imports scikit-learn (0.15-0.25 s of start-up).
    probe = "import sys; from clcore.benchmarks.sources import load_digits; load_digits(); print('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    digits_cache_path(0.2).write_bytes(b"damaged")
    assert torch.equal(load_digits().test_labels, fresh.test_labels)
    monkeypatch.setenv("CLCORE_CACHE", "")
    assert digits_cache_path(0.2) is None


def test_eval_split_val_tests_every_seen_task_on_its_held_out_training_images():
    """``eval_split="val"``: the accuracy matrix is measured on the validation images, never the test set."""
    on_val = SplitBenchmark("digits", num_tasks=2, seed=3, val_fraction=0.2, eval_split="val")
    on_test = SplitBenchmark("digits", num_tasks=2, seed=3, val_fraction=0.2)
    for benchmark in (on_val, on_test):
        benchmark.setup_task(1)
    for benchmark, split in ((on_val, "val"), (on_test, "test")):
        loaders = benchmark.test_dataloader()
        assert len(loaders) == 2  # tasks 1 and 2
        for task_id, loader in enumerate(loaders):
            expected = benchmark.task_split(split, task_id)
            labels = torch.cat([batch[1] for batch in loader])
            assert torch.equal(labels, expected.labels), (split, task_id)
    # two different sets of images: 20% of the training images against the official test images
    assert len(on_val.task_split("val", 0).labels) != len(on_test.task_split("test", 0).labels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eval_split": "train"}, "benchmark.eval_split='train': choose test, or val"),
        ({"eval_split": "val", "val_fraction": 0.0}, "needs validation images"),
    ],
)
def test_eval_split_is_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PermutedBenchmark("digits", num_tasks=2, **kwargs)
