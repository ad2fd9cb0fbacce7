"""Image-folder sources: a class per sub-folder, TinyImageNet and CUB-200-2011.

Tiny data sets are written with Pillow in each one's real on-disk layout (JPEG and PNG files of
several sizes and modes; TinyImageNet's wnids.txt, words.txt and val annotations; CUB's four
metadata files), then read through the real loaders: labels and class ids, the resize rule, class
names, the missing-data and damaged-data messages, the cache, and one whole run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from clcore.benchmarks import DamagedDataError, DataNotFoundError, SplitBenchmark, image_folders
from clcore.benchmarks.image_folders import (
    CUB_URL,
    TINYIMAGENET_URL,
    cub200_source,
    cub_class_name,
    decode_images,
    image_folder_source,
    load_image_folder,
    register_image_folder_sources,
    tinyimagenet_source,
)
from clcore.benchmarks.sources import SOURCES, load_source, register_source
from clcore.clrun import ConfigError, preflight, run_sequence
from clcore.clrun.construction import build

register_image_folder_sources()  # sources.py does it too; calling it again changes nothing

# One solid colour a class (class id order): JPEG keeps a flat colour within a few levels.
COLORS = [(210, 40, 40), (40, 200, 60), (50, 60, 220), (220, 210, 40), (40, 200, 210)]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch) -> Path:
    """The decoded-tensor cache of this test (``$CLCORE_CACHE``), outside its ``tmp_path``."""
    cache = tmp_path_factory.mktemp("cache") / "clcore"
    monkeypatch.setenv("CLCORE_CACHE", str(cache))
    return cache


def write_image(path: Path, size: tuple[int, int], color=(0, 0, 0), mode: str = "RGB", array=None) -> None:
    """An image file (format from the suffix) of ``size = (width, height)``: flat ``color`` or ``array``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array) if array is not None else Image.new("RGB", size, color)
    image.convert(mode).save(path)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def close_to(images: torch.Tensor, color, tolerance: int = 6) -> bool:
    """Every pixel of ``images [N, 3, H, W]`` within ``tolerance`` of ``color`` in every channel."""
    target = torch.tensor(color).view(1, 3, 1, 1)
    return bool(((images.int() - target).abs() <= tolerance).all())


def rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


# ---- a class per sub-folder ------------------------------------------------------------------------
def write_folder_tree(base: Path) -> None:
    """``train/`` and ``test/`` with classes dog, cat, sea_lion (sorted: cat, dog, sea_lion)."""
    for split, count in (("train", 2), ("test", 1)):
        for class_name, color in (("dog", COLORS[1]), ("cat", COLORS[0]), ("sea_lion", COLORS[2])):
            folder = base / split / class_name
            for index in range(count):
                write_image(folder / f"{index}.png", (12 + index * 7, 12), color)
        # found at any depth; other files and hidden files are not images of the class
        write_image(base / split / "dog" / "more" / "z.jpg", (20, 30), COLORS[1])
        (base / split / "dog" / "notes.txt").write_text("not an image")
        (base / split / "dog" / ".hidden.png").write_bytes(b"not read: hidden")
        (base / split / ".cache").mkdir()


def test_classes_are_the_sorted_sub_folders_and_every_image_is_fitted(tmp_path):
    write_folder_tree(tmp_path)
    # modes other than RGB: a grey PNG and an RGBA PNG are read as RGB
    write_image(tmp_path / "train" / "cat" / "grey.png", (9, 14), (90, 90, 90), mode="L")
    write_image(tmp_path / "train" / "sea_lion" / "alpha.png", (16, 16), COLORS[2], mode="RGBA")
    before = snapshot(tmp_path)
    data = load_image_folder(tmp_path / "train", tmp_path / "test", (8, 8), name="pets")
    assert data.class_names == ("cat", "dog", "sea lion") and data.num_classes == 3
    # cat: 0.png 1.png grey.png; dog: 0.png 1.png more/z.jpg; sea_lion: 0.png 1.png alpha.png
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.test_labels.tolist() == [0, 1, 1, 2]
    assert data.train_images.shape == (9, 3, 8, 8) and data.test_images.shape == (4, 3, 8, 8)
    assert data.train_images.dtype == torch.uint8
    grey = data.train_images[2]
    assert (grey == 90).all()  # three equal channels
    for label in range(3):
        rows = [i for i, y in enumerate(data.train_labels.tolist()) if y == label and i != 2]
        assert close_to(data.train_images[rows], COLORS[label])
        assert close_to(data.test_images[data.test_labels == label], COLORS[label])
    # no statistics given: the training images' own, per channel
    pixels = data.train_images.double() / 255
    assert data.mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert data.std == pytest.approx(pixels.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-4)
    assert snapshot(tmp_path) == before  # nothing written into the data folder


def test_the_resize_rule_is_a_centre_crop_to_the_aspect_ratio_then_a_resize(tmp_path):
    """An image of the target size is taken bit for bit; a wide or tall one loses its sides."""
    noise = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    wide = np.zeros((8, 24, 3), np.uint8)  # height 8, width 24: red | green | blue thirds
    wide[:, :8], wide[:, 8:16], wide[:, 16:] = COLORS[0], COLORS[1], COLORS[2]
    big = np.kron(wide, np.ones((2, 2, 1), np.uint8))  # 16 x 48: the same, twice the size
    files = {"exact.png": noise, "wide.png": wide, "tall.png": wide.transpose(1, 0, 2), "big.png": big}
    for name, array in files.items():
        write_image(tmp_path / name, (0, 0), array=array)
    images = decode_images([tmp_path / name for name in files], (8, 8), 3, fix="-")
    assert torch.equal(images[0], torch.from_numpy(noise).permute(2, 0, 1))  # untouched
    for index in (1, 2):  # the centred square at scale 1: the green third exactly
        assert close_to(images[index : index + 1], COLORS[1], tolerance=0)
    # downscaled 2x with Pillow's antialiased bilinear filter: the inner columns are pure green
    assert close_to(images[3:4, :, :, 1:7], COLORS[1], tolerance=0)
    with Image.open(tmp_path / "big.png") as image:
        expected = np.array(ImageOps.fit(image.convert("RGB"), (8, 8), Image.Resampling.BILINEAR))
    assert torch.equal(images[3], torch.from_numpy(expected).permute(2, 0, 1))
    # non-square targets and grey output
    assert decode_images([tmp_path / "wide.png"], (6, 10), 3, fix="-").shape == (1, 3, 6, 10)
    grey = decode_images([tmp_path / "exact.png"], (8, 8), 1, fix="-")
    expected_grey = np.array(Image.fromarray(noise).convert("L"))
    assert grey.shape == (1, 1, 8, 8) and torch.equal(grey[0, 0], torch.from_numpy(expected_grey))


def test_threads_decode_the_same_images_and_name_the_first_damaged_file(tmp_path):
    paths = []
    for index in range(11):
        paths.append(tmp_path / f"{index:02d}.jpg")
        write_image(paths[-1], (10 + index, 13), COLORS[index % 5])
    serial = decode_images(paths, (8, 8), 3, fix="-", workers=1)
    assert torch.equal(decode_images(paths, (8, 8), 3, fix="-", workers=3, chunk=2), serial)
    for index in (4, 9):
        paths[index].write_bytes(paths[index].read_bytes()[:60])  # truncated
    with pytest.raises(DamagedDataError, match=f"{paths[4]}: not a readable image"):
        decode_images(paths, (8, 8), 3, fix="-", workers=3, chunk=2)


@pytest.fixture
def folder_source():
    """``pet_folder``: ``<root>/pets/{train,val}/<class>/`` as an entry of 3 classes, 3x8x8."""
    entry = register_source(
        image_folder_source(
            "pet_folder", "pets", 3, (3, 8, 8), test_subdir="val", url="https://example.org/pets"
        )
    )
    yield entry
    SOURCES.pop(entry.name)


def test_an_image_folder_entry_loads_through_the_registry(tmp_path, folder_source):
    write_folder_tree(tmp_path / "pets")
    (tmp_path / "pets" / "test").rename(tmp_path / "pets" / "val")
    data = load_source("pet_folder", str(tmp_path))
    assert data.image_shape == (3, 8, 8) and data.class_names == ("cat", "dog", "sea lion")
    # the class count and the shape are known before loading, for the split's rules
    with pytest.raises(ConfigError, match="= 4 classes, but pet_folder has 3"):
        SplitBenchmark("pet_folder", num_tasks=2, classes_per_task=2, root=str(tmp_path))
    split = SplitBenchmark("pet_folder", num_tasks=3, classes_per_task=1, root=str(tmp_path))
    assert split.image_shape == (3, 8, 8)
    # an entry built twice with the same arguments is the same entry: registering it is a no-op
    assert (
        image_folder_source(
            "pet_folder", "pets", 3, (3, 8, 8), test_subdir="val", url="https://example.org/pets"
        )
        == SOURCES["pet_folder"]
    )


def test_a_missing_image_folder_names_what_it_looked_for(tmp_path, folder_source):
    with pytest.raises(DataNotFoundError) as error:
        folder_source.load(str(tmp_path), False)
    message = str(error.value)
    assert f"not found in {tmp_path / 'pets'}/ (missing train/, val/)" in message
    assert "https://example.org/pets" in message and "one sub-folder of images per class" in message
    with pytest.raises(DataNotFoundError, match=r"image folder\(s\) not found: .*nowhere/"):
        load_image_folder(tmp_path / "nowhere", tmp_path, (8, 8))


@pytest.mark.parametrize(
    ("damage", "named", "words"),
    [
        (
            lambda b: (b / "train" / "cat" / "0.png").write_text("<html>"),
            "train/cat/0.png",
            "not a readable image",
        ),
        (lambda b: shutil.rmtree(b / "test" / "cat"), "test", "lacks class folder(s) cat of"),
        (lambda b: (b / "test" / "bird").mkdir(), "test", "has class folder(s) bird that"),
        (
            lambda b: (b / "train" / "ant").mkdir() or (b / "test" / "ant").mkdir(),
            "train",
            "holds 4 class folders",
        ),
        (
            lambda b: [p.unlink() for p in (b / "test" / "cat").iterdir()],
            "test/cat",
            "holds no images",
        ),
    ],
    ids=["unreadable-image", "test-lacks-a-class", "test-has-an-extra-class", "class-count", "empty-class"],
)
def test_a_damaged_image_folder_names_the_file(tmp_path, damage, named, words):
    base = tmp_path / "pets"
    write_folder_tree(base)
    damage(base)
    before = snapshot(tmp_path)
    source = image_folder_source("pets_damaged", "pets", 3, (3, 8, 8))
    with pytest.raises(DamagedDataError) as error:
        source.load(str(tmp_path), False)
    assert f"{base / named}: " in str(error.value) and words in str(error.value), str(error.value)
    assert snapshot(tmp_path) == before


# ---- TinyImageNet -----------------------------------------------------------------------------------
# Listed unsorted in wnids.txt, as the official file is: class ids follow the sorted wnids.
WNIDS = ["n04067472", "n01443537", "n09246464", "n02124075"]
SORTED_WNIDS = sorted(WNIDS)
WORDS = {
    "n01443537": "goldfish, Carassius auratus",
    "n02124075": "Egyptian cat",
    "n04067472": "reel",
    "n09246464": "cliff, drop, drop-off",
}
# The validation images' classes, in file order (val_0.JPEG, val_1.JPEG, ...): mixed, as in the official set.
VAL_WNIDS = ["n09246464", "n01443537", "n04067472", "n01443537", "n02124075", "n09246464", "n02124075"]


def color_of(wnid: str) -> tuple[int, int, int]:
    return COLORS[SORTED_WNIDS.index(wnid)]


def write_tinyimagenet(root: Path, per_class: int = 3) -> Path:
    """``root/tiny-imagenet-200/`` in the official layout, 64x64 JPEGs, one flat colour a class."""
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(f"{wnid}\n" for wnid in WNIDS))
    # words.txt names every WordNet id, not only the data set's
    other = "n00001740\tentity\nn00001930\tphysical entity\n"
    (base / "words.txt").write_text(other + "".join(f"{w}\t{WORDS[w]}\n" for w in SORTED_WNIDS))
    for wnid in WNIDS:
        folder = base / "train" / wnid
        for index in range(per_class):
            write_image(folder / "images" / f"{wnid}_{index}.JPEG", (64, 64), color_of(wnid))
        boxes = "".join(f"{wnid}_{index}.JPEG\t0\t0\t63\t63\n" for index in range(per_class))
        (folder / f"{wnid}_boxes.txt").write_text(boxes)
    # a grey photograph, as the official training set holds some: read as three equal channels
    write_image(base / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_grey.JPEG", (64, 64), (120,) * 3, "L")
    lines = []
    for index, wnid in enumerate(VAL_WNIDS):
        # one of another size, resized like any other
        size = (80, 48) if index == 3 else (64, 64)
        write_image(base / "val" / "images" / f"val_{index}.JPEG", size, color_of(wnid))
        lines.append(f"val_{index}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    write_image(base / "test" / "images" / "test_0.JPEG", (64, 64), (0, 0, 0))  # unlabelled: not read
    return base


def tiny_tinyimagenet(size: int = 64):
    return tinyimagenet_source("tiny_tinyimagenet", num_classes=4, size=size)


def test_tinyimagenet_reads_train_folders_and_the_labelled_validation_set(tmp_path):
    base = write_tinyimagenet(tmp_path)
    before = snapshot(tmp_path)
    data = tiny_tinyimagenet().load(str(tmp_path), False)
    assert data.class_names == ("goldfish", "Egyptian cat", "reel", "cliff")  # sorted wnids, first synonym
    grey_class = SORTED_WNIDS.index(WNIDS[0])
    expected = [c for c in range(4) for _ in range(3 + (c == grey_class))]
    assert data.train_labels.tolist() == expected
    assert data.test_labels.tolist() == [SORTED_WNIDS.index(w) for w in VAL_WNIDS]  # from the annotations
    assert data.train_images.shape == (13, 3, 64, 64) and data.test_images.shape == (7, 3, 64, 64)
    grey_row = expected.index(grey_class) + 3  # the last of its class: images/<wnid>_grey.JPEG
    assert (data.train_images[grey_row] == data.train_images[grey_row, :1]).all()
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        for row, label in enumerate(labels.tolist()):
            if not (split == "train" and row == grey_row):
                assert close_to(images[row : row + 1], COLORS[label]), (split, row)
    # 64x64 files are taken as decoded, not resampled
    first = base / "train" / SORTED_WNIDS[0] / "images" / f"{SORTED_WNIDS[0]}_0.JPEG"
    assert torch.equal(data.train_images[0], torch.from_numpy(rgb(first)).permute(2, 0, 1))
    assert (data.mean, data.std) == (image_folders.TINYIMAGENET_MEAN, image_folders.TINYIMAGENET_STD)
    assert snapshot(tmp_path) == before


def test_a_smaller_tinyimagenet_size_resizes_every_image(tmp_path):
    write_tinyimagenet(tmp_path)
    data = tiny_tinyimagenet(size=16).load(str(tmp_path), False)
    assert data.image_shape == (3, 16, 16)
    assert close_to(data.test_images[3:4], COLORS[data.test_labels[3]])  # the 80x48 one


def test_missing_tinyimagenet_names_every_file_it_looked_for_and_where_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        tiny_tinyimagenet().load(str(tmp_path), True)
    message = str(error.value)
    assert f"TinyImageNet not found in {tmp_path / 'tiny-imagenet-200'}/" in message
    assert "missing wnids.txt, words.txt, train/, val/images/, val/val_annotations.txt" in message
    assert TINYIMAGENET_URL in message and "benchmark.root" in message
    assert "benchmark.download=true cannot fetch it" in message  # download asked for, impossible
    base = write_tinyimagenet(tmp_path)
    (base / "val" / "val_annotations.txt").unlink()
    with pytest.raises(DataNotFoundError, match=r"\(missing val/val_annotations.txt\)\. Download"):
        tiny_tinyimagenet().load(str(tmp_path), False)


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def drop_line(path: Path, starting: str) -> None:
    path.write_text(
        "".join(line for line in path.read_text().splitlines(True) if not line.startswith(starting))
    )


TRAIN_IMAGE = f"train/{WNIDS[1]}/images/{WNIDS[1]}_1.JPEG"
TINY_CASES = [
    (
        lambda b: append(b / "val" / "val_annotations.txt", "val_99.JPEG\tn01443537\t0\t0\t1\t1\n"),
        "val/val_annotations.txt",
        "line 8 labels {base}/val/images/val_99.JPEG, which does not exist",
    ),
    (
        lambda b: append(b / "val" / "val_annotations.txt", "val_0.JPEG\tn99999999\t0\t0\t1\t1\n"),
        "val/val_annotations.txt",
        "line 8 labels val_0.JPEG with n99999999, a class wnids.txt does not list",
    ),
    (
        lambda b: append(b / "val" / "val_annotations.txt", "val_2.JPEG\tn04067472\t0\t0\t1\t1\n"),
        "val/val_annotations.txt",
        "line 8 labels val_2.JPEG a second time",
    ),
    (
        lambda b: (b / "val" / "val_annotations.txt").write_text("\n"),
        "val/val_annotations.txt",
        "the file is empty",
    ),
    (
        lambda b: (b / TRAIN_IMAGE).write_bytes((b / TRAIN_IMAGE).read_bytes()[:300]),
        TRAIN_IMAGE,
        "not a readable image",
    ),
    (lambda b: (b / TRAIN_IMAGE).write_text("<html>404</html>"), TRAIN_IMAGE, "not a readable image"),
    (lambda b: drop_line(b / "words.txt", "n04067472"), "words.txt", "names no class n04067472 of wnids.txt"),
    (
        lambda b: drop_line(b / "wnids.txt", "n04067472"),
        "wnids.txt",
        "holds 3 class ids (wnids), but the source",
    ),
    (
        lambda b: write_image(b / "train" / "n00000001" / "images" / "x.JPEG", (64, 64)),
        "train/n00000001",
        "is the folder of a class (n00000001) that wnids.txt does not list",
    ),
    (lambda b: shutil.rmtree(b / "train" / "n09246464"), "train/n09246464", "is missing: class n09246464"),
]


@pytest.mark.parametrize(
    ("damage", "named", "words"),
    TINY_CASES,
    ids=[
        "annotation-of-a-missing-file",
        "annotation-of-an-unknown-wnid",
        "annotation-twice",
        "empty-annotations",
        "truncated-jpeg",
        "html-as-jpeg",
        "wnid-without-words",
        "wnid-count",
        "train-folder-of-an-unknown-wnid",
        "wnid-without-train-folder",
    ],
)
def test_damaged_tinyimagenet_names_the_file_and_writes_nothing(tmp_path, damage, named, words):
    base = write_tinyimagenet(tmp_path)
    damage(base)
    before = snapshot(tmp_path)
    with pytest.raises(DamagedDataError) as error:
        tiny_tinyimagenet().load(str(tmp_path), False)
    message = str(error.value)
    assert message.startswith(f"{base / named}: "), message
    assert words.format(base=base) in message, message
    assert TINYIMAGENET_URL in message  # what to do: an intact copy of the official archive
    assert snapshot(tmp_path) == before


# ---- CUB-200-2011 -----------------------------------------------------------------------------------
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
# (class id 1-based, is_train, size, mode) per image id 1..8, in the official files' id order
CUB_IMAGES = [
    (1, 1, (40, 30), "RGB"),
    (1, 0, (25, 50), "RGB"),
    (1, 1, (33, 33), "L"),
    (2, 0, (50, 40), "RGB"),
    (2, 1, (16, 16), "RGB"),
    (2, 1, (70, 20), "CMYK"),
    (3, 1, (30, 45), "RGB"),
    (3, 0, (64, 48), "RGB"),
]


def write_cub(root: Path) -> Path:
    """``root/CUB_200_2011/`` in the official layout, one flat colour a class."""
    base = root / "CUB_200_2011"
    base.mkdir(parents=True)
    (base / "classes.txt").write_text("".join(f"{i} {name}\n" for i, name in enumerate(CUB_CLASSES, 1)))
    images, labels, split, boxes = [], [], [], []
    for image_id, (label, is_train, size, mode) in enumerate(CUB_IMAGES, 1):
        folder = CUB_CLASSES[label - 1]
        relative = f"{folder}/{folder[4:]}_{image_id:04d}_{100 + image_id}.jpg"
        color = (128, 128, 128) if mode == "L" else COLORS[label - 1]
        write_image(base / "images" / relative, size, color, mode)
        images.append(f"{image_id} {relative}\n")
        labels.append(f"{image_id} {label}\n")
        split.append(f"{image_id} {is_train}\n")
        boxes.append(f"{image_id} 1.0 2.0 10.0 12.0\n")
    (base / "images.txt").write_text("".join(images))
    (base / "image_class_labels.txt").write_text("".join(labels))
    (base / "train_test_split.txt").write_text("".join(split))
    (base / "bounding_boxes.txt").write_text("".join(boxes))  # not used
    return base


def tiny_cub():
    return cub200_source("tiny_cub", num_classes=3, size=16)


def test_cub_reads_the_official_split_labels_and_class_names(tmp_path):
    write_cub(tmp_path)
    before = snapshot(tmp_path)
    data = tiny_cub().load(str(tmp_path), False)
    assert data.class_names == ("Black footed Albatross", "Laysan Albatross", "Sooty Albatross")
    assert cub_class_name("200.Common_Yellowthroat") == "Common Yellowthroat"
    train = [i for i, image in enumerate(CUB_IMAGES) if image[1] == 1]
    test = [i for i, image in enumerate(CUB_IMAGES) if image[1] == 0]
    assert data.train_labels.tolist() == [CUB_IMAGES[i][0] - 1 for i in train]
    assert data.test_labels.tolist() == [CUB_IMAGES[i][0] - 1 for i in test]
    assert data.train_images.shape == (5, 3, 16, 16) and data.test_images.shape == (3, 3, 16, 16)
    for split, ids in (("train", train), ("test", test)):
        images = getattr(data, f"{split}_images")
        for row, i in enumerate(ids):
            label, _, _, mode = CUB_IMAGES[i]
            if mode == "L":
                assert close_to(images[row : row + 1], (128, 128, 128))
            else:  # RGB and CMYK photographs alike, at every size
                assert close_to(images[row : row + 1], COLORS[label - 1], tolerance=8), (split, i)
    assert (data.mean, data.std) == (image_folders.CUB200_MEAN, image_folders.CUB200_STD)
    assert snapshot(tmp_path) == before


def test_missing_cub_names_every_file_it_looked_for_and_where_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        tiny_cub().load(str(tmp_path), False)
    message = str(error.value)
    assert f"CUB-200-2011 not found in {tmp_path / 'CUB_200_2011'}/" in message
    assert "missing images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, images/" in message
    assert CUB_URL in message and "benchmark.root" in message
    base = write_cub(tmp_path)
    (base / "classes.txt").unlink()
    with pytest.raises(DataNotFoundError, match=r"\(missing classes.txt\)\. Download CUB_200_2011.tgz"):
        tiny_cub().load(str(tmp_path), False)


def replace_line(path: Path, number: int, text: str | None) -> None:
    lines = path.read_text().splitlines(True)
    lines[number - 1 : number] = [] if text is None else [text + "\n"]
    path.write_text("".join(lines))


FIRST_IMAGE = "images/001.Black_footed_Albatross/Black_footed_Albatross_0001_101.jpg"
CUB_CASES = [
    (
        lambda b: (b / FIRST_IMAGE).unlink(),
        "images.txt",
        f"lists image 1 as {{base}}/{FIRST_IMAGE}, which does not",
    ),
    (
        lambda b: replace_line(b / "image_class_labels.txt", 4, "4 4"),
        "image_class_labels.txt",
        "value 4, not 1..3",
    ),
    (
        lambda b: replace_line(b / "image_class_labels.txt", 2, "2 2"),
        "image_class_labels.txt",
        "gives image 2 class 2 (002.Laysan_Albatross), but images.txt places it in 001.Black_footed_Albatross/",
    ),
    (
        lambda b: replace_line(b / "train_test_split.txt", 5, None),
        "train_test_split.txt",
        "has no line for image 5",
    ),
    (
        lambda b: replace_line(b / "train_test_split.txt", 5, "5 2"),
        "train_test_split.txt",
        "not 0 (test) or 1",
    ),
    (lambda b: replace_line(b / "classes.txt", 3, None), "classes.txt", "holds 2 classes, but the source"),
    (
        lambda b: replace_line(b / "images.txt", 3, "three"),
        "images.txt",
        "line 3 ('three') is not '<id> <value>'",
    ),
    (lambda b: replace_line(b / "images.txt", 3, "1 x.jpg"), "images.txt", "line 3 gives id 1 a second time"),
    (lambda b: (b / FIRST_IMAGE).write_bytes(b"\xff\xd8\xff"), FIRST_IMAGE, "not a readable image"),
]


@pytest.mark.parametrize(
    ("damage", "named", "words"),
    CUB_CASES,
    ids=[
        "listed-image-missing",
        "label-outside",
        "label-unlike-folder",
        "split-line-missing",
        "split-value",
        "class-count",
        "malformed-line",
        "id-twice",
        "unreadable-jpeg",
    ],
)
def test_damaged_cub_names_the_file_and_writes_nothing(tmp_path, damage, named, words):
    base = write_cub(tmp_path)
    damage(base)
    before = snapshot(tmp_path)
    with pytest.raises(DamagedDataError) as error:
        tiny_cub().load(str(tmp_path), False)
    message = str(error.value)
    assert message.startswith(f"{base / named}: "), message
    assert words.format(base=base) in message, message
    assert CUB_URL in message
    assert snapshot(tmp_path) == before


# ---- the cache of decoded tensors ---------------------------------------------------------------------
def test_a_second_load_reads_the_cache_and_an_edited_file_is_decoded_again(tmp_path, cache_dir, monkeypatch):
    base = write_cub(tmp_path / "data")
    first = tiny_cub().load(str(tmp_path / "data"), False)
    (cached,) = (cache_dir / "image-folders").glob("tiny_cub-*.pt")
    real_decode = image_folders.decode_image

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(image_folders, "decode_image", no_decoding)
    again = tiny_cub().load(str(tmp_path / "data"), False)
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(again, field), getattr(first, field))
    assert (again.class_names, again.mean, again.std) == (first.class_names, first.mean, first.std)
    # an edited image (new content, new modification time) is not served from the old cache
    edited = base / "images" / CUB_CLASSES[2] / f"{CUB_CLASSES[2][4:]}_0007_107.jpg"
    write_image(edited, (30, 45), COLORS[4])
    stat = edited.stat()
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded although cached"):
        tiny_cub().load(str(tmp_path / "data"), False)
    monkeypatch.setattr(image_folders, "decode_image", real_decode)
    fresh = tiny_cub().load(str(tmp_path / "data"), False)
    assert close_to(fresh.train_images[-1:], COLORS[4]) and len(list(cached.parent.glob("*.pt"))) == 2
    # a damaged cache file is rebuilt
    for path in cached.parent.glob("*.pt"):
        path.write_bytes(b"garbage")
    assert torch.equal(tiny_cub().load(str(tmp_path / "data"), False).train_images, fresh.train_images)
    assert not [path for path in base.rglob("*") if path.suffix == ".pt"]  # the cache is elsewhere
    monkeypatch.setenv("CLCORE_CACHE", "")
    shutil.rmtree(cache_dir)
    tiny_cub().load(str(tmp_path / "data"), False)
    assert not cache_dir.exists()  # switched off: nothing written anywhere


# ---- the registered entries and their benchmark configs ----------------------------------------------
def test_the_registered_entries_state_class_count_and_shape_and_register_once():
    assert (SOURCES["tinyimagenet"].num_classes, SOURCES["tinyimagenet"].image_shape) == (200, (3, 64, 64))
    assert (SOURCES["cub200"].num_classes, SOURCES["cub200"].image_shape) == (200, (3, 64, 64))
    register_image_folder_sources()  # idempotent
    assert SOURCES["tinyimagenet"] == tinyimagenet_source() and SOURCES["cub200"] == cub200_source()
    with pytest.raises(ValueError, match="'cub200' is registered already"):
        register_source(cub200_source(size=128))


@pytest.mark.parametrize(
    ("benchmark", "source"), [("split_tinyimagenet", "tinyimagenet"), ("split_cub200", "cub200")]
)
def test_the_benchmark_configs_split_all_classes_by_the_seed_and_name_missing_data(
    make_config, tmp_path, benchmark, source
):
    cfg = make_config(f"benchmark={benchmark}", f"benchmark.root={tmp_path / 'nodata'}")
    options = cfg.benchmark
    assert options.source == source and options.shuffle_classes is True
    assert options.num_tasks * options.classes_per_task == SOURCES[source].num_classes == 200
    # judged from the registry entry before any file is read, together with the missing data
    cfg = make_config(
        f"benchmark={benchmark}", f"benchmark.root={tmp_path / 'nodata'}", "benchmark.num_tasks=11"
    )
    with pytest.raises(ConfigError) as error:
        preflight(cfg)
    message = str(error.value)
    assert f"= 220 classes, but {source} has 200" in message
    assert {"tinyimagenet": TINYIMAGENET_URL, "cub200": CUB_URL}[source] in message
    assert "not found in" in message


def test_split_tinyimagenet_runs_end_to_end_on_a_tiny_copy(make_config, tmp_path, cache_dir):
    """The packaged config on a 4-class copy in the official layout: 2 tasks x 2 classes, seeded order."""
    data_root = tmp_path / "data"
    write_tinyimagenet(data_root)
    before = snapshot(data_root)
    entry = register_source(tiny_tinyimagenet(size=16))
    try:
        overrides = [
            "benchmark=split_tinyimagenet",
            "benchmark.source=tiny_tinyimagenet",
            f"benchmark.root={data_root}",
            "benchmark.num_tasks=2",
            "benchmark.classes_per_task=2",
            "benchmark.batch_size=4",
            "benchmark.val_fraction=0",
            "backbone.hidden_dims=[16]",
            "trainer.max_epochs=1",
            "save_checkpoints=false",
        ]
        with pytest.raises(ConfigError, match="= 6 classes, but tiny_tinyimagenet has 4"):
            preflight(make_config(*overrides, "benchmark.classes_per_task=3", subdir="refused"))
        cfg = make_config(*overrides)
        results = run_sequence(cfg)
        assert results.tasks_done == 2 and results.acc_matrix.shape == (2, 2)
        assert not torch.isnan(results.acc_matrix[1]).any()
        benchmark, _ = build(cfg)
        order = torch.randperm(4, generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        assert benchmark.classes_of(0) + benchmark.classes_of(1) == order
        assert benchmark.class_names_of(0) == [benchmark.data.class_names[c] for c in order[:2]]
        assert benchmark.image_shape == (3, 16, 16)
    finally:
        SOURCES.pop(entry.name)
    assert snapshot(data_root) == before  # read only
    assert len(list((cache_dir / "image-folders").glob("tiny_tinyimagenet-*.pt"))) == 1
