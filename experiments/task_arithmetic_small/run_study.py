"""The CPU-sized task-arithmetic study: one ``clta`` run, its results copied here.

    python experiments/task_arithmetic_small/run_study.py            # MNIST if its test files are found, else digits
    python experiments/task_arithmetic_small/run_study.py --data digits

Data: with ``--data auto`` (default) the MNIST *test* files in ``--mnist-src`` (default
``../shared/data/mnist`` next to the repository) are split 8000 / 2000 into a small MNIST by
``scripts/mnist_from_test_set.py`` (written to ``data/mnist-from-test``, git-ignored) and the study
runs ``clta experiment=small_mnist``; without them it runs ``clta experiment=small_digits``
(scikit-learn's 8x8 digits). Writes ``results.json`` (the protocol's JSON plus what was run),
``table.md`` and ``config.yaml`` (the composed config) next to this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from clcore.utils.atomic import write_json_atomic, write_text_atomic

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MNIST_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def shown(path: Path) -> str:
    """``path`` relative to the repository root, where the commands run."""
    return os.path.relpath(path.resolve(), REPO)


def mnist_test_files_in(folder: Path) -> bool:
    return all((folder / name).is_file() or (folder / f"{name}.gz").is_file() for name in MNIST_TEST_FILES)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", choices=("auto", "mnist", "digits"), default="auto")
    parser.add_argument("--mnist-src", type=Path, default=REPO.parent / "shared" / "data" / "mnist")
    parser.add_argument("--data-root", type=Path, default=REPO / "data")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=REPO / "outputs" / "task_arithmetic_small" / time.strftime("%Y-%m-%d_%H-%M-%S"),
    )
    args = parser.parse_args()

    use_mnist = args.data == "mnist" or (args.data == "auto" and mnist_test_files_in(args.mnist_src))
    if args.data == "mnist" and not mnist_test_files_in(args.mnist_src):
        raise SystemExit(f"--data mnist: no {' / '.join(MNIST_TEST_FILES)} (.gz) in {args.mnist_src}")
    commands = []
    if use_mnist:
        mnist_root = args.data_root / "mnist-from-test"
        build = ["scripts/mnist_from_test_set.py", "--src", shown(args.mnist_src), "--dst", shown(mnist_root)]
        build += ["--train", "8000"]
        subprocess.run([sys.executable, *build], check=True, cwd=REPO)
        commands.append("python " + " ".join(build))
        experiment = ["experiment=small_mnist", f"data_root={shown(mnist_root)}"]
        source = "the MNIST test set (10,000 images) split 8,000 train / 2,000 test by scripts/mnist_from_test_set.py"
    else:
        experiment = ["experiment=small_digits"]
        source = "scikit-learn's 8x8 digits (1,797 images), split 1,437 train / 360 test (stratified, seed 0)"

    clta = Path(sys.executable).parent / "clta"
    command = [str(clta), *experiment, f"hydra.run.dir={shown(args.run_dir)}"]
    commands.append("clta " + " ".join(command[1:]))
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    seconds = time.perf_counter() - started

    results = json.loads((args.run_dir / "results" / "task_arithmetic.json").read_text())
    sizes = next(iter(results["tasks"].values()))["sizes"]
    data = (
        f"{source}; of the train split, {results['model']['pretrain_images']} upright images pre-train the "
        f"model and the rest make the rotated tasks ({sizes['train']} fine-tuning / {sizes['val']} validation "
        f"images per task); each task's test set is the {sizes['test']} test images, rotated."
    )
    results["study"] = {
        "what": "CPU-sized check that the clta pieces work together (fine-tuning, merging, aTLAS, negation); not a paper claim",
        "data": data,
        "commands": commands,
        "wall_seconds": seconds,
        # "-dirty": the working tree had changes not yet committed
        "code_version": subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            cwd=REPO,
        ).stdout.strip(),
    }
    write_json_atomic(HERE / "results.json", results)
    write_text_atomic(HERE / "table.md", (args.run_dir / "results" / "table.md").read_text())
    write_text_atomic(HERE / "config.yaml", (args.run_dir / ".hydra" / "config.yaml").read_text())
    print(f"wrote {HERE / 'results.json'}, {HERE / 'table.md'}, {HERE / 'config.yaml'} ({seconds:.0f}s)")


if __name__ == "__main__":
    main()
