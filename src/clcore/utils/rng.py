"""The global random generators' states: saved with a checkpoint, and kept unchanged around a measurement.

torch (and CUDA), numpy and Python's ``random`` are the generators a run draws from (weights,
dropout, a head grown for a new task, a data loader's base seed). ``capture_rng_state`` returns
their states as tensors and plain numbers (readable with ``weights_only=True``);
``restore_rng_state`` sets them back; ``preserved_rng_state`` does both around a block, so that
an optional evaluation, plot or logger leaves the run's random numbers, and so its accuracy
matrix, exactly as they would be without it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

log = logging.getLogger(__name__)


def capture_rng_state() -> dict:
    """torch, numpy and Python ``random`` states as tensors and numbers (``weights_only``-safe)."""
    _, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(numpy_keys.astype(np.int64)),
            "pos": int(numpy_pos),
            "has_gauss": int(numpy_has_gauss),
            "cached_gaussian": float(numpy_gauss),
        },
        "python": {
            "version": python_version,
            "internal": torch.tensor(python_internal, dtype=torch.int64),
            "gauss_next": python_gauss,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["internal"].tolist()), python_state["gauss_next"])
    )
    cuda_states = state.get("cuda")
    if cuda_states and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
        torch.cuda.set_rng_state_all(cuda_states)
    elif cuda_states:
        log.warning(
            "checkpoint holds CUDA RNG states for %d device(s); not restored on this machine",
            len(cuda_states),
        )


@contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Within the block, draw freely; afterwards every generator is where it was before."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)
