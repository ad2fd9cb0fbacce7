"""Shared fixtures: compose the real packaged configs with tiny overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from clcore.benchmarks.sources import SOURCES, DataSource, register_source
from clcore.clrun import compose
from tests.helpers import TinyLoader

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"

# Fast, quiet overrides for end-to-end runs: no progress bar, no plots unless a test asks.
QUIET = ["trainer.enable_progress_bar=false", "callbacks=none", "logger=[]"]


@pytest.fixture(autouse=True)
def _single_thread():
    # The CI machine has 2 cores; one intra-op thread keeps the suite's runtime predictable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """The composed ``clrun`` config, as Hydra would build it, writing into ``output_dir``."""
    return compose(overrides, output_dir=output_dir)


@pytest.fixture
def make_config(tmp_path):
    def _make(*overrides: str, quiet: bool = True, subdir: str = "run") -> DictConfig:
        return compose_config([*(QUIET if quiet else []), *overrides], tmp_path / subdir)

    return _make


@pytest.fixture
def tiny_source():
    """``tiny6``: six classes of 4x4 grey images, registered for one test (``source.load.calls`` counts loads)."""
    source = register_source(DataSource("tiny6", 6, (1, 4, 4), TinyLoader("tiny6", 6), needs_root=False))
    yield source
    SOURCES.pop(source.name)
