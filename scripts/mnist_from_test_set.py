"""Build a small MNIST in torchvision's layout from the official *test* files alone.

For machines that have only ``t10k-images-idx3-ubyte.gz`` / ``t10k-labels-idx1-ubyte.gz`` (no
internet, no training files): the first ``--train`` test images become the training set and the
rest the test set, written as official IDX files under ``<dst>/MNIST/raw/``. Results from such
data are *not* comparable to full-MNIST numbers; say so wherever you report them.

    python scripts/mnist_from_test_set.py --src ../shared/data/mnist --dst data/mnist-from-test --train 8000
    clrun experiment=finetuning_pmnist benchmark.root=data/mnist-from-test
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        data = stream.read()
    _, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    if dtype_code != 0x08:
        raise ValueError(f"{path}: expected unsigned-byte IDX data")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def find(src: Path, stem: str) -> Path:
    for candidate in (
        src / stem,
        src / f"{stem}.gz",
        src / "MNIST" / "raw" / stem,
        src / "MNIST" / "raw" / f"{stem}.gz",
    ):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{stem}(.gz) not found in {src} or {src}/MNIST/raw")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", type=Path, required=True, help="folder with t10k-*-ubyte(.gz)")
    parser.add_argument("--dst", type=Path, required=True, help="output root (gets MNIST/raw/)")
    parser.add_argument("--train", type=int, default=8000, help="how many test images become training images")
    args = parser.parse_args()

    images, labels = (
        read_idx(find(args.src, "t10k-images-idx3-ubyte")),
        read_idx(find(args.src, "t10k-labels-idx1-ubyte")),
    )
    if not 0 < args.train < len(labels):
        raise SystemExit(f"--train must be in 1..{len(labels) - 1}")
    raw = args.dst / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    write_idx(raw / "train-images-idx3-ubyte", images[: args.train])
    write_idx(raw / "train-labels-idx1-ubyte", labels[: args.train])
    write_idx(raw / "t10k-images-idx3-ubyte", images[args.train :])
    write_idx(raw / "t10k-labels-idx1-ubyte", labels[args.train :])
    print(f"wrote {args.train} training and {len(labels) - args.train} test images to {raw}")


if __name__ == "__main__":
    main()
