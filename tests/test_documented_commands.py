"""Every ``clrun`` and ``clta`` command in the README and the docs, run as written.

The commands are read from the pages' ``bash`` blocks, so a command added to the docs is tested
without touching this file. Each runs in a folder holding tiny MNIST and CIFAR-100 files in their
real formats under ``data/`` (where the configs look by default), with tiny overrides appended
(fewer tasks, one epoch, a few batches): what is tested is that the command as written composes,
passes the pre-flight check and runs, not its numbers. Single runs go through ``run_sequence`` in
this process (the CLI's own behaviour is tested in ``tests/clrun``); sweeps, ``--help``,
``--cfg`` and ``clta`` through the real commands.

A few commands cannot run here by their nature (a GPU, pretrained weights, a cluster); for each,
``EXPECTED_REFUSALS`` holds the message the user gets instead, which must say what to do.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clcore.benchmarks.errors import DataNotFoundError
from clcore.clrun import compose, run_sequence
from clcore.config_rules import ConfigError
from tests.library.test_damaged_data import idx_bytes, write_cifar10, write_cifar100
from tests.library.test_multi_dataset import write_notmnist
from tests.library.test_torchvision_sources import write_idx_source, write_svhn

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]

TINY_CLRUN = [
    "benchmark.num_tasks=2",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.enable_progress_bar=false",
]
TINY_SWEEP = [*TINY_CLRUN, "hydra.sweeper.n_trials=2"]
TINY_CLTA = [
    "cpu_threads=null",
    "model.pretrain.steps=20",
    "finetune.steps=4",
    "finetune.warmup_steps=1",
    "addition.methods.ta.alpha_grid=[0.5,1.0]",
    "addition.methods.ties.alpha_grid=[1.0]",
    "addition.methods.dare.alpha_grid=[1.0]",
    "addition.methods.iso.alpha_grid=[1.0]",
    "addition.methods.tsv.alpha_grid=[1.0]",
    "negation.alpha_grid=[0.0,1.0]",
    "atlas.epochs=1",
    "atlas.shots_per_class=2",
]
# Commands that cannot run on a 2-core CPU machine without internet, and what they say instead.
EXPECTED_REFUSALS = {
    # a user's own package: the placeholder in the README is named as not importable
    "clrun +callbacks.mine._target_=my_package.MyCallback": "cannot be imported",
    # ViT-B/16 weights from the internet
    "clrun experiment=tak_split_cifar100_clip benchmark.root=data": "Pretrained weights for open_clip model 'ViT-B-16'",
    # the eight CLIP data sets are not here: every missing folder is named
    "clta experiment=vit_b32_8tasks data_root=/path/to/data": "missing under",
    # needs experiments/tak_small/pretrain.py first (the README chains it with &&)
    "clrun experiment=tak_small_mnist": "pretrain",
    # four CPU processes on a machine with fewer cores
    "clrun trainer.devices=4 trainer.strategy=ddp_find_unused_parameters_true experiment=hat_pmnist": "core",
    # any torchvision data set by name: STL10's files are not here; the message names them and the download
    "clrun benchmark=split_mnist benchmark.source=torchvision:STL10 benchmark.root=data benchmark.num_tasks=5": "STL10",
    # sbatch does not exist here
    "clrun -m hydra/launcher=slurm hydra.launcher.partition=gpu experiment=hat_pmnist seed=1,2,3,4,5": "which this machine does not have",
}
# Run by their own tests, in the folder the docs describe (docs/examples, tests.helpers).
TESTED_ELSEWHERE = {"PYTHONPATH=.": "tests/test_extending.py, tests/clrun/test_researcher_experience.py"}


def documented_commands() -> list[tuple[str, list[str]]]:
    """``(page, words)`` for every clrun/clta command in a bash block (continuations joined,
    comments dropped, ``a && b`` split)."""
    commands = []
    for page in PAGES:
        for block in re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", page.read_text(), flags=re.S | re.M):
            for line in block.replace("\\\n", " ").splitlines():
                words, current = [*shlex.split(line, comments=True), "&&"], []
                for word in words:
                    if word != "&&":
                        current.append(word)
                        continue
                    if current and current[0] in ("clrun", "clta"):
                        commands.append((str(page.relative_to(REPO)), current))
                    elif current and current[0] in TESTED_ELSEWHERE:
                        pass
                    current = []
    return commands


COMMANDS = documented_commands()


def test_the_pages_hold_commands_and_every_expected_refusal_is_still_documented():
    written = {shlex.join(words) for _, words in COMMANDS}
    assert len(COMMANDS) > 40
    assert set(EXPECTED_REFUSALS) <= written, set(EXPECTED_REFUSALS) - written


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """A working directory as a user has it: ``data/`` with MNIST, CIFAR-100 and the other four data
    sets of ``five_datasets`` (CIFAR-10, SVHN, notMNIST, Fashion-MNIST), each in its real format."""
    folder = tmp_path_factory.mktemp("user")
    for root in (folder / "data", folder / "data" / "mnist-from-test"):  # the README's two places
        _write_mnist(root / "MNIST" / "raw", train=300, test=100)
    write_cifar100(folder / "data")
    write_cifar10(folder / "data")
    write_svhn(folder / "data")
    write_notmnist(folder / "data")
    write_idx_source(folder / "data", "fashion_mnist")
    return folder


def _write_mnist(raw: Path, train: int, test: int) -> None:
    """The four idx files, with a class-dependent bright block so that the digit can be learnt."""
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = rng.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
        for index, label in enumerate(labels):
            images[index, 2 * label : 2 * label + 6, 4:24] = 255
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(idx_bytes(images))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))


def _environment(folder: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "src")])
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _in_process(words: list[str]) -> bool:
    """A single clrun run on one process (no sweep, help, printed config, or several devices:
    Lightning's DDP launches the command line again, which would be pytest's here)."""
    several_devices = any(word.startswith(("trainer.devices=", "trainer.strategy=")) for word in words)
    flags = {"-m", "--multirun", "--help", "--cfg", "--hydra-help"}
    return words[0] == "clrun" and not flags & set(words) and not several_devices


@pytest.mark.parametrize(("page", "words"), COMMANDS, ids=[shlex.join(w) for _, w in COMMANDS])
def test_documented_command_runs_as_written(page, words, user_folder, monkeypatch, tmp_path):
    written = shlex.join(words)
    refusal = EXPECTED_REFUSALS.get(written)
    monkeypatch.chdir(user_folder)
    if _in_process(words):
        monkeypatch.setenv("WANDB_MODE", "offline")
        monkeypatch.setenv("WANDB_SILENT", "true")
        try:
            # a refusal comes before training: the command exactly as written
            tiny = TINY_CLRUN if refusal is None else []
            cfg = compose([*words[1:], *tiny], output_dir=tmp_path / "run")
            results = run_sequence(cfg)
            _finish_wandb()
        except (ConfigError, DataNotFoundError, OSError, RuntimeError) as error:
            assert refusal is not None, f"{page}: {written} failed: {error}"
            assert refusal in str(error), f"{page}: {written}: {error}"
            return
        assert refusal is None, f"{page}: {written} was expected to be refused"
        assert results.tasks_done == 2
        return

    tiny = []
    if refusal is not None:
        tiny = [f"hydra.sweep.dir={tmp_path / 'sweep'}"] if "-m" in words else []
    elif words[0] == "clta" and "--help" not in words:
        tiny = [*TINY_CLTA, f"paths.output_dir={tmp_path / 'run'}"]
    elif words[0] == "clrun" and "--help" not in words and "--cfg" not in words:
        tiny = [*(TINY_SWEEP if "+sweep=optuna" in " ".join(words) or "optuna" in written else TINY_CLRUN)]
        tiny.append(f"hydra.sweep.dir={tmp_path / 'sweep'}")
    done = subprocess.run(
        [str(BIN / words[0]), *words[1:], *tiny],
        cwd=user_folder,
        env=_environment(user_folder),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    if refusal is not None:
        assert done.returncode != 0, f"{page}: {written} was expected to be refused:\n{output[-2000:]}"
        assert refusal in output, f"{page}: {written}:\n{output[-3000:]}"
        assert "Traceback" not in output, f"{page}: {written}:\n{output[-3000:]}"
        return
    assert done.returncode == 0, f"{page}: {written}:\n{output[-3000:]}"


def _finish_wandb() -> None:
    """What clrun's JobOutcome hook does after a job: the next run starts its own wandb run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
