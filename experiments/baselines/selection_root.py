"""Write an MNIST root for hyperparameter selection whose *test* files are held-out training images.

clcore's benchmarks report the accuracy matrix on the test split only, and have no option to
evaluate on the validation split. To select hyperparameters on validation data only, the
selection runs use another root: its training files are the first ``len - held_out`` training
images of ``--src`` and its "test" files the last ``--held-out`` training images. The real test
files of ``--src`` are never read.

    python experiments/baselines/selection_root.py --src /tmp/baselines_data/mnist-from-test \
        --dst /tmp/baselines_data/mnist-selection --held-out 1600
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from mnist_from_test_set import read_idx, write_idx  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", type=Path, required=True, help="root holding MNIST/raw/train-*-ubyte")
    parser.add_argument("--dst", type=Path, required=True, help="output root (gets MNIST/raw/)")
    parser.add_argument(
        "--held-out", type=int, default=1600, help="training images that become the 'test' split"
    )
    args = parser.parse_args()

    raw_src = args.src / "MNIST" / "raw"
    images = read_idx(raw_src / "train-images-idx3-ubyte")
    labels = read_idx(raw_src / "train-labels-idx1-ubyte")
    keep = len(labels) - args.held_out
    if not 0 < keep < len(labels):
        raise SystemExit(f"--held-out must be in 1..{len(labels) - 1}")
    raw = args.dst / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    write_idx(raw / "train-images-idx3-ubyte", images[:keep])
    write_idx(raw / "train-labels-idx1-ubyte", labels[:keep])
    write_idx(raw / "t10k-images-idx3-ubyte", images[keep:])
    write_idx(raw / "t10k-labels-idx1-ubyte", labels[keep:])
    print(f"wrote {keep} training and {args.held_out} held-out (validation) images to {raw}")


if __name__ == "__main__":
    main()
