"""Multi-data-set sequences (5-datasets): one whole data set per task at a common shape, each task
normalised with its own statistics, and notMNIST read from its PNG folder."""

from __future__ import annotations

import collections
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clcore.benchmarks import DamagedDataError, DataNotFoundError
from clcore.benchmarks.multi_dataset import (
    NOTMNIST_CLASSES,
    NOTMNIST_FOLDER,
    NOTMNIST_URL,
    Conversion,
    MultiDatasetBenchmark,
    load_notmnist,
    notmnist_is_test,
    register_notmnist,
)
from clcore.benchmarks.sources import SOURCES, DataSource, ImageData, register_source
from clcore.callbacks import CLCallback
from clcore.clrun import ConfigError, preflight, run_sequence

GREY_STATS = ((0.4,), (0.2,))
COLOUR_STATS = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


class NoisyLoader:
    """``num_classes`` classes of ``channels x size x size`` images: a class's brightness plus seeded noise
    (learnable, and every image distinct); the test split is a fresh draw."""

    def __init__(self, name, channels, size, num_classes, stats, per_class=16):
        self.name, self.channels, self.size, self.num_classes = name, channels, size, num_classes
        self.stats, self.per_class = stats, per_class

    def __call__(self, root, download):
        generator = torch.Generator().manual_seed(sum(map(ord, self.name)))

        def draw(per_class):
            labels = torch.arange(self.num_classes).repeat_interleave(per_class)
            noise = torch.randint(
                0, 60, (len(labels), self.channels, self.size, self.size), generator=generator
            )
            return (labels.view(-1, 1, 1, 1) * (190 // self.num_classes) + noise).to(torch.uint8), labels

        (train, train_labels), (test, test_labels) = draw(self.per_class), draw(self.per_class // 2)
        names = tuple(f"{self.name} class {c}" for c in range(self.num_classes))
        return ImageData(
            self.name, train, train_labels, test, test_labels, self.num_classes, *self.stats, names
        )


def tiny(name, channels, size, num_classes, stats):
    loader = NoisyLoader(name, channels, size, num_classes, stats)
    return DataSource(name, num_classes, (channels, size, size), loader, needs_root=False)


@pytest.fixture
def tiny_sources():
    """``grey8``: 3 classes of grey 8x8; ``colour6``: 4 classes of RGB 6x6; ``grey8b``: 3 classes of grey 8x8."""
    sources = [
        register_source(tiny("grey8", 1, 8, 3, GREY_STATS)),
        register_source(tiny("colour6", 3, 6, 4, COLOUR_STATS)),
        register_source(tiny("grey8b", 1, 8, 3, ((0.3,), (0.1,)))),
    ]
    yield {source.name: source for source in sources}
    for source in sources:
        SOURCES.pop(source.name)


def benchmark(sources=("grey8", "colour6"), **kwargs):
    options = dict(num_tasks=len(sources), image_size=8, channels=3, fit="pad", val_fraction=0.25, seed=0)
    return MultiDatasetBenchmark(list(sources), **{**options, **kwargs})


# ---- the common layout ------------------------------------------------------------------------------
@pytest.mark.parametrize("fit", ["pad", "resize"])
def test_every_task_is_brought_to_the_common_shape_by_the_stated_rule(tiny_sources, fit):
    bench = benchmark(fit=fit)
    assert bench.image_shape == (3, 8, 8)
    grey, colour = (bench.source_data(t).test_images for t in range(2))
    # grey 8x8 -> RGB 8x8: the grey channel three times, nothing else
    converted = bench.task_split("test", 0).images
    assert torch.equal(converted, grey.expand(-1, 3, -1, -1))
    # RGB 6x6 -> 8x8
    converted = bench.task_split("test", 1).images
    if fit == "pad":  # centred on a black canvas, 1 pixel a side
        assert torch.equal(converted[:, :, 1:7, 1:7], colour)
        border = torch.ones(8, 8, dtype=torch.bool)
        border[1:7, 1:7] = False
        assert converted[:, :, border].eq(0).all()
    else:  # bilinear with antialiasing, rounded
        expected = F.interpolate(
            colour.float(), size=(8, 8), mode="bilinear", antialias=True, align_corners=False
        )
        assert torch.equal(converted, expected.round().clamp(0, 255).to(torch.uint8))


def test_one_channel_makes_colour_grey_by_luma(tiny_sources):
    bench = benchmark(channels=1)
    assert bench.image_shape == (1, 8, 8)
    assert torch.equal(bench.task_split("test", 0).images, bench.source_data(0).test_images)
    colour = bench.source_data(1).test_images.float()
    luma = (0.299 * colour[:, 0] + 0.587 * colour[:, 1] + 0.114 * colour[:, 2]).round().to(torch.uint8)
    assert torch.equal(bench.task_split("test", 1).images[:, 0, 1:7, 1:7], luma)


def test_the_padded_statistics_are_the_literatures():
    """MNIST's 0.1307 / 0.3081, padded to 32x32: the 0.1 / 0.2752 of HAT's, ACL's and GPM's loaders."""
    mean, std = Conversion((1, 28, 28), 3, (32, 32), "pad").statistics((0.1307,), (0.3081,))
    assert mean == pytest.approx([0.1] * 3, abs=1e-4) and std == pytest.approx([0.2752] * 3, abs=1e-4)
    # unchanged images keep the registered values exactly
    assert Conversion((3, 32, 32), 3, (32, 32), "pad").statistics(*COLOUR_STATS) == tuple(
        map(list, COLOUR_STATS)
    )


# ---- per-task normalisation -------------------------------------------------------------------------
@pytest.mark.parametrize("fit", ["pad", "resize"])
def test_a_batch_of_task_t_is_normalised_with_its_own_statistics(tiny_sources, fit):
    bench = benchmark(fit=fit)
    pixels = torch.cat([bench.task_split(s, 1).images for s in ("train", "val")]).double() / 255
    if fit == "pad":  # the registered statistics, carried through the padding (area 36/64)
        a = 36 / 64
        mean = [a * m for m in COLOUR_STATS[0]]
        std = [(a * (s * s + m * m) - a * a * m * m) ** 0.5 for m, s in zip(*COLOUR_STATS, strict=True)]
        # the formula gives the padded images' own statistics from the source images' own
        native = bench.source_data(1).train_images.double() / 255
        own = native.mean((0, 2, 3)).tolist(), native.std((0, 2, 3), correction=0).tolist()
        formula = Conversion((3, 6, 6), 3, (8, 8), "pad").statistics(*own)
        assert formula[0] == pytest.approx(pixels.mean((0, 2, 3)).tolist())
        assert formula[1] == pytest.approx(pixels.std((0, 2, 3), correction=0).tolist())
    else:  # resized: measured on the converted training images of the source
        mean = pixels.mean((0, 2, 3)).tolist()
        std = pixels.std((0, 2, 3), correction=0).tolist()
    task_mean, task_std = bench.task_statistics(1)
    assert task_mean.flatten().tolist() == pytest.approx(mean, abs=1e-6)
    assert task_std.flatten().tolist() == pytest.approx(std, abs=1e-6)
    grey_mean, grey_std = bench.task_statistics(0)  # grey -> RGB: the grey statistics repeated
    assert grey_mean.flatten().tolist() == pytest.approx(
        [0.4] * 3
    ) and grey_std.flatten().tolist() == pytest.approx([0.2] * 3)
    for task_id in range(2):
        images = bench.task_split("test", task_id).images
        m, s = bench.task_statistics(task_id)
        torch.testing.assert_close(bench.prepare_batch(images, task_id), (images.float() / 255 - m) / s)


@pytest.mark.parametrize(
    "model_input", [None, {"size": 12, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}]
)
def test_a_mixed_batch_equals_each_task_prepared_alone(tiny_sources, model_input):
    bench = benchmark(model_input=model_input)
    images = torch.cat([bench.task_split("train", 0).images[:5], bench.task_split("train", 1).images[:7]])
    task_ids = torch.tensor([0] * 5 + [1] * 7)
    shuffle = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    images, task_ids = images[shuffle], task_ids[shuffle]
    mixed = bench.prepare_mixed_batch(images, task_ids)
    for task_id in range(2):
        rows = task_ids == task_id
        torch.testing.assert_close(mixed[rows], bench.prepare_batch(images[rows], task_id), rtol=0, atol=0)
    assert mixed.shape == (12, *bench.image_shape)


# ---- tasks, labels, the validation split ----------------------------------------------------------
def test_each_task_has_its_data_sets_classes_with_local_labels(tiny_sources):
    bench = benchmark(sources=("grey8", "colour6", "grey8b"))
    assert [bench.num_classes_of(t) for t in range(3)] == [3, 4, 3]
    assert [bench.classes_of(t) for t in range(3)] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    assert bench.class_names_of(1) == [f"colour6 class {c}" for c in range(4)]
    for task_id, source in enumerate(("grey8", "colour6", "grey8b")):
        native = bench.source_data(task_id)
        assert native.name == source
        assert torch.equal(bench.task_split("test", task_id).labels, native.test_labels)  # local, in order
        assert bench.task_split("train", task_id).labels.unique().tolist() == list(range(native.num_classes))
    data = bench.load()  # the whole sequence: global labels, every task's images once
    assert data.num_classes == 10 and data.name == "grey8+colour6+grey8b" and len(data.class_names) == 10
    assert torch.equal(data.test_labels[-24:], bench.source_data(2).test_labels + 7)
    split = bench.task_split("train", 1)
    assert (
        split.images.untyped_storage().data_ptr() == data.train_images.untyped_storage().data_ptr()
    )  # a slice


def test_each_task_holds_out_its_own_validation_images_from_the_seed(tiny_sources):
    def rows(images):
        return collections.Counter(bytes(image.numpy()) for image in images)

    first, again, other = benchmark(seed=3), benchmark(seed=3), benchmark(seed=4)
    for task_id in range(2):
        train, val = first.task_split("train", task_id), first.task_split("val", task_id)
        native = first.source_data(task_id).train_images
        assert len(val.labels) == round(0.25 * len(native)) and len(train.labels) + len(val.labels) == len(
            native
        )
        # train and validation images are the source's training images, each once
        as_converted = Conversion(tuple(native.shape[1:]), 3, (8, 8), "pad")(native)
        assert rows(train.images) + rows(val.images) == rows(as_converted)
        assert torch.equal(val.images, again.task_split("val", task_id).images)
        assert not torch.equal(val.images, other.task_split("val", task_id).images)
    # a task's split depends on the seed and its position, not on the other tasks
    swapped = benchmark(sources=("grey8", "grey8b"), seed=3)
    assert torch.equal(swapped.task_split("val", 0).images, first.task_split("val", 0).images)


def test_the_fingerprint_covers_every_source(tiny_sources):
    base = benchmark().data_fingerprint()
    assert benchmark(fit="resize").data_fingerprint() == base  # the conversion is an option, not data
    assert benchmark(sources=("grey8", "grey8b")).data_fingerprint() != base
    assert benchmark(sources=("colour6", "grey8")).data_fingerprint() != base


# ---- refusals ---------------------------------------------------------------------------------------
def test_every_refusal_is_listed_at_once(tiny_sources):
    with pytest.raises(ConfigError) as refused:
        MultiDatasetBenchmark(
            ["grey8", "nosuch", "cifar10"], num_tasks=4, channels=2, image_size=4, fit="pad"
        )
    problems = "\n".join(refused.value.problems)
    assert "benchmark.sources: 'nosuch' unknown" in problems
    assert "benchmark.root is not set: source(s) cifar10" in problems
    assert "benchmark.num_tasks=4 but benchmark.sources lists 3 data sets" in problems
    assert "benchmark.channels=2: must be 1 (grey) or 3 (RGB)" in problems
    assert "benchmark.fit=pad cannot shrink grey8's 8x8 images to benchmark.image_size=4x4" in problems
    assert "benchmark.fit=pad cannot shrink cifar10's 32x32 images" in problems
    assert len(refused.value.problems) == 6
    problems = refused.value.problems
    assert not any(problem.startswith("benchmark.source=") for problem in problems)
    for problem in MultiDatasetBenchmark.config_problems(
        {"sources": [], "num_tasks": 1}
    ) + MultiDatasetBenchmark.config_problems({"sources": ["grey8"], "num_tasks": 1, "fit": "crop"}):
        assert problem.startswith(("benchmark.sources=[]", "benchmark.fit='crop'"))


def test_a_torchvision_source_that_cannot_be_opened_is_named(tmp_path):
    options = {"sources": ["torchvision:NoSuchSet", "mnist"], "num_tasks": 2, "root": str(tmp_path)}
    (problem,) = MultiDatasetBenchmark.config_problems(options)
    assert problem.startswith("benchmark.sources: 'torchvision:NoSuchSet': ")


def test_dil_needs_one_class_count(tiny_sources):
    assert MultiDatasetBenchmark.paradigm_problems({"sources": ["grey8", "grey8b"]}, "dil") == []
    assert MultiDatasetBenchmark.paradigm_problems({"sources": ["grey8", "colour6"]}, "til") == []
    (problem,) = MultiDatasetBenchmark.paradigm_problems({"sources": ["grey8", "colour6"]}, "dil")
    assert "paradigm=dil needs the same classes in every task" in problem and "grey8 3, colour6 4" in problem


def multi(*overrides):
    """The five_datasets config on the tiny sources."""
    return (
        "benchmark=five_datasets",
        "benchmark.sources=[grey8,colour6]",
        "benchmark.num_tasks=2",
        "benchmark.image_size=8",
        "benchmark.batch_size=16",
        "trainer.max_epochs=1",
        "backbone.hidden_dims=[16]",
        *overrides,
    )


def test_the_preflight_lists_the_sequences_problems_with_the_rest(tiny_sources, make_config, tmp_path):
    with pytest.raises(ConfigError) as refused:
        preflight(
            make_config(
                *multi(
                    "benchmark.sources=[grey8,nosuch,mnist,notmnist]",
                    "benchmark.num_tasks=5",
                    f"benchmark.root={tmp_path}",
                )
            )
        )
    problems = "\n".join(refused.value.problems)
    assert "'nosuch' unknown" in problems
    assert "benchmark.num_tasks=5 but benchmark.sources lists 4 data sets" in problems
    # every missing data set named, each with its folder
    assert f"MNIST not found in {tmp_path}/MNIST/raw/" in problems
    assert f"notMNIST not found in {tmp_path}/{NOTMNIST_FOLDER}/" in problems and NOTMNIST_URL in problems


def test_the_preflight_refuses_dil_over_unequal_class_counts(tiny_sources, make_config):
    with pytest.raises(ConfigError, match="paradigm=dil needs the same classes in every task"):
        preflight(make_config(*multi("paradigm=dil")))


def test_the_five_datasets_config(make_config):
    cfg = make_config("benchmark=five_datasets")
    assert list(cfg.benchmark.sources) == ["cifar10", "mnist", "svhn", "notmnist", "fashion_mnist"]
    assert (cfg.benchmark.num_tasks, cfg.benchmark.image_size, cfg.benchmark.channels) == (5, 32, 3)
    assert cfg.benchmark.fit == "pad"
    problems = MultiDatasetBenchmark.config_problems(
        {key: value for key, value in cfg.benchmark.items() if key != "_target_"}
    )
    # its only problem, until every source is registered, is the sources not registered yet
    unregistered = [source for source in cfg.benchmark.sources if source not in SOURCES]
    if unregistered:
        (problem,) = problems
        assert problem.startswith(f"benchmark.sources: {', '.join(map(repr, unregistered))} unknown")
    else:
        assert problems == []
    # 28x28 grey data sets are padded: MNIST's statistics become the literature's
    mnist = Conversion((1, 28, 28), cfg.benchmark.channels, (32, 32), cfg.benchmark.fit)
    assert mnist.padding == (2, 2, 2, 2) and mnist.channel_rule == "repeat" and mnist.statistics_are_exact


# ---- runs -------------------------------------------------------------------------------------------
class Capture(CLCallback):
    def __init__(self) -> None:
        self.algorithm = self.benchmark = None
        self.memory_inputs: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.algorithm, self.benchmark = pl_module, trainer.datamodule


@pytest.mark.parametrize("paradigm", ["til", "cil"])
def test_a_multi_data_set_sequence_runs(tiny_sources, make_config, paradigm):
    capture = Capture()
    results = run_sequence(make_config(*multi(f"paradigm={paradigm}")), [capture])
    assert results.tasks_done == 2
    assert not np.isnan(np.asarray(results.acc_matrix)[1, :2]).any()
    heads = capture.algorithm.heads
    assert heads.classes_per_task == [3, 4]
    if paradigm == "cil":
        assert heads.targets(torch.tensor([0, 3]), 1).tolist() == [3, 6]  # colour6's classes after grey8's


def test_joint_training_mixes_the_data_sets(tiny_sources, make_config):
    results = run_sequence(make_config(*multi("paradigm=cil", "algorithm=joint")))
    assert results.tasks_done == 2 and not np.isnan(np.asarray(results.acc_matrix)[1, :2]).any()


def test_dil_runs_over_data_sets_of_one_class_count(tiny_sources, make_config):
    results = run_sequence(make_config(*multi("paradigm=dil", "benchmark.sources=[grey8,grey8b]")))
    assert results.tasks_done == 2


def test_replay_prepares_each_remembered_sample_with_its_own_tasks_statistics(tiny_sources, make_config):
    capture = Capture()
    cfg = make_config(*multi("paradigm=til", "algorithm=er", "algorithm.memory_size=20"))
    assert run_sequence(cfg, [capture]).tasks_done == 2
    bench, memory = capture.benchmark, capture.algorithm.memory.contents()
    assert memory["inputs"].dtype == torch.uint8 and set(memory["task_ids"].tolist()) == {0, 1}
    prepared = bench.prepare_mixed_batch(memory["inputs"], memory["task_ids"])
    for task_id in range(2):
        rows = memory["task_ids"] == task_id
        expected = bench.prepare_batch(memory["inputs"][rows], task_id)
        torch.testing.assert_close(prepared[rows], expected, rtol=0, atol=0)
        wrong = bench.prepare_batch(memory["inputs"][rows], 1 - task_id)
        assert (prepared[rows] - wrong).abs().max() > 0.1


# ---- notMNIST ---------------------------------------------------------------------------------------
FONTS = [f"Rm9udA{i:02d}.png" for i in range(30)]


def write_notmnist(root, fonts=FONTS, letters=NOTMNIST_CLASSES, size=28):
    """A notMNIST_small folder in the real layout: one 28x28 grey PNG per letter and font."""
    from PIL import Image

    images = {}
    for label, letter in enumerate(letters):
        (root / NOTMNIST_FOLDER / letter).mkdir(parents=True, exist_ok=True)
        for index, font in enumerate(fonts):
            pixels = np.full((size, size), label * 20 + index, dtype=np.uint8)
            pixels[index % size, :] = 255
            Image.fromarray(pixels, mode="L").save(root / NOTMNIST_FOLDER / letter / font)
            images[(letter, font)] = pixels
    return images


def test_notmnist_loads_from_its_png_folder_with_a_fixed_split(tmp_path, caplog):
    written = write_notmnist(tmp_path)
    (tmp_path / NOTMNIST_FOLDER / "A" / "empty.png").write_bytes(b"")  # as in the official archive
    with caplog.at_level(logging.WARNING):
        data = load_notmnist(tmp_path)
    assert "empty.png" in caplog.text
    test_fonts = [font for font in FONTS if notmnist_is_test(font)]
    assert 0 < len(test_fonts) < len(FONTS)  # the tiny folder has both splits
    assert len(data.test_labels) == 10 * len(test_fonts) and len(data.train_labels) == 10 * (
        30 - len(test_fonts)
    )
    assert data.image_shape == (1, 28, 28) and data.num_classes == 10 and data.class_names == NOTMNIST_CLASSES
    # the test split: letter by letter, fonts in name order, each image as written
    expected = [written[(letter, font)] for letter in NOTMNIST_CLASSES for font in sorted(test_fonts)]
    assert np.array_equal(data.test_images[:, 0].numpy(), np.stack(expected))
    assert data.test_labels.tolist() == [label for label in range(10) for _ in test_fonts]
    pixels = data.train_images.double() / 255
    assert data.mean[0] == pytest.approx(float(pixels.mean())) and data.std[0] == pytest.approx(
        float(pixels.std())
    )


def test_notmnist_is_a_registered_source_a_sequence_can_use(tmp_path, tiny_sources):
    write_notmnist(tmp_path)
    assert register_notmnist() is SOURCES["notmnist"]  # registering again is harmless
    bench = MultiDatasetBenchmark(
        ["notmnist", "colour6"], num_tasks=2, image_size=32, fit="pad", root=str(tmp_path)
    )
    assert bench.image_shape == (3, 32, 32) and bench.num_classes_of(0) == 10
    letters = bench.task_split("test", 0).images
    assert torch.equal(letters[:, :, 2:30, 2:30], bench.source_data(0).test_images.expand(-1, 3, -1, -1))


def test_missing_or_damaged_notmnist_is_named(tmp_path, monkeypatch):
    with pytest.raises(
        DataNotFoundError, match=f"notMNIST not found in {tmp_path}/{NOTMNIST_FOLDER}/"
    ) as missing:
        load_notmnist(tmp_path)
    assert NOTMNIST_URL in str(missing.value) and "A, B, C" in str(missing.value)
    write_notmnist(tmp_path, letters=NOTMNIST_CLASSES[:9])
    with pytest.raises(DataNotFoundError, match=r"letter\(s\) J\)"):
        load_notmnist(tmp_path)

    def offline(url, download_root, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", offline)
    with pytest.raises(DataNotFoundError, match=f"the download of {NOTMNIST_URL} failed"):
        load_notmnist(tmp_path, download=True)
    write_notmnist(tmp_path, fonts=["big.png"], letters=["J"], size=32)
    with pytest.raises(DamagedDataError, match="big.png: is a 32x32 image, notMNIST's are 28x28"):
        load_notmnist(tmp_path)
    (tmp_path / NOTMNIST_FOLDER / "J" / "big.png").unlink()
    write_notmnist(tmp_path, letters=["J"])  # complete again, then 11 files no decoder reads
    for index in range(11):
        (tmp_path / NOTMNIST_FOLDER / "B" / f"broken{index}.png").write_bytes(b"not a png")
    with pytest.raises(DamagedDataError, match="11 PNG files cannot be decoded"):
        load_notmnist(tmp_path)


def test_fewer_tasks_than_sources_run_the_first_ones(tiny_sources):
    benchmark = MultiDatasetBenchmark(["grey8", "colour6"], num_tasks=1, image_size=8, fit="pad")
    assert benchmark.sources == ["grey8"] and benchmark.num_tasks == 1
