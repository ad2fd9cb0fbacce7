"""Shared fixtures: compose the real packaged configs with tiny overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

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
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="clcore.configs", version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, f"paths.output_dir={output_dir}"])


@pytest.fixture
def make_config(tmp_path):
    def _make(*overrides: str, quiet: bool = True, subdir: str = "run") -> DictConfig:
        return compose_config([*(QUIET if quiet else []), *overrides], tmp_path / subdir)

    return _make
