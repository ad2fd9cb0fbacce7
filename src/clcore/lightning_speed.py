"""Every place clcore reaches into Lightning's internals for speed, in one module, behind one guard.

clcore trains one Trainer per task on models whose steps take a few milliseconds, so Lightning's
per-step and per-Trainer bookkeeping is a visible share of a run (``docs/speed.md``). Four
workarounds remove it; each depends on something Lightning does not promise to keep:

1. ``PER_STEP_ATTRIBUTES``: Lightning assigns ``LightningModule._current_fx_name`` around every
   hook call (about 40 times a step); ``CLAlgorithm.__setattr__`` stores it without
   ``nn.Module.__setattr__``'s registry checks.
2. ``NullProfiler``: the Trainer enters ``profiler.profile(name)`` around each of about 45 hook
   calls a step; Lightning's ``PassThroughProfiler`` builds a generator context each time.
3. ``entry_points_looked_up_once``: every ``Trainer()`` reads every installed distribution's
   metadata for its ``callbacks_factory`` entry points (``lightning.fabric.utilities.registry``).
4. ``use_cached_cuda_check``: Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` on import, which
   makes torch re-open NVML in every ``torch.cuda.is_available()`` (Adam calls it every step).

``speedups_apply()`` is the guard: for a Lightning release outside ``TESTED_LIGHTNING`` (or with
``CLCORE_PLAIN_LIGHTNING=1`` in the environment) every function here falls back to plain
Lightning behaviour, so a changed internal costs speed, never correctness.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import lightning
from lightning.fabric.utilities import registry
from lightning.pytorch.profilers import PassThroughProfiler

# [first, end) of the (major, minor) Lightning releases whose internals these workarounds were
# measured and tested on. Widen it after running tests/clrun/test_speed_paths.py on a new release.
TESTED_LIGHTNING = ((2, 4), (2, 7))
PLAIN_LIGHTNING_VARIABLE = "CLCORE_PLAIN_LIGHTNING"
# Attributes Lightning assigns on the LightningModule around every hook call; they never hold a
# parameter, buffer or submodule (see CLAlgorithm.__setattr__).
PER_STEP_ATTRIBUTES = frozenset({"_current_fx_name"})


def _major_minor(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def speedups_apply(version: str | None = None) -> bool:
    """True when the installed Lightning (or ``version``) is one the workarounds were tested on."""
    if os.environ.get(PLAIN_LIGHTNING_VARIABLE, "") not in ("", "0"):
        return False
    major_minor = _major_minor(version or lightning.__version__)
    first, end = TESTED_LIGHTNING
    return major_minor is not None and first <= major_minor < end


def per_step_attributes() -> frozenset[str]:
    """The Lightning-assigned attribute names ``CLAlgorithm.__setattr__`` may store directly."""
    return PER_STEP_ATTRIBUTES if speedups_apply() else frozenset()


_NOTHING = nullcontext()


class NullProfiler(PassThroughProfiler):
    """Lightning's ``PassThroughProfiler``, minus the cost of entering its context.

    ``PassThroughProfiler`` inherits a generator-based context manager, built and torn down on
    every hook call although its start and stop do nothing; this returns one shared
    ``nullcontext``. Set ``trainer.profiler=simple`` (or ``advanced``, ``pytorch``) to profile.
    """

    def profile(self, action_name: str) -> nullcontext:
        return _NOTHING


def default_profiler() -> dict:
    """Trainer keyword for ``trainer.profiler: null``: the ``NullProfiler``, or nothing (Lightning's own)."""
    return {"profiler": NullProfiler()} if speedups_apply() else {}


@contextmanager
def entry_points_looked_up_once() -> Iterator[None]:
    """Within the block, Lightning's external-callback lookup reads installed packages once.

    Every ``Trainer()`` calls ``_load_external_callbacks``, which asks
    ``importlib.metadata.entry_points`` for its ``callbacks_factory`` group: a read of every
    installed distribution's metadata (about 9 ms with 160 packages), once per task with a
    Trainer per task. Installed packages do not change during a run, so the result is kept for
    the block. The factories it finds are still called by every Trainer: each Trainer gets its
    own callback instances.
    """
    original = getattr(registry, "entry_points", None)
    if original is None or not speedups_apply():
        yield
        return

    @functools.cache
    def lookup(*, group: str):
        return original(group=group)

    registry.entry_points = lookup
    try:
        yield
    finally:
        registry.entry_points = original


def use_cached_cuda_check() -> None:
    """Undo Lightning's ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` on machines without a GPU.

    Lightning sets it so that forked DataLoader workers never see an initialised CUDA. With a
    CUDA build of torch and no GPU, torch then re-opens NVML in every ``torch.cuda.is_available()``,
    which ``torch.optim.Adam`` calls on every step (~0.5 ms per step measured here). Without a GPU
    there is no CUDA state a fork could poison, and clcore's in-memory loaders fork no workers;
    with a GPU the setting is left alone.
    """
    import torch

    if not speedups_apply():
        return
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and torch.cuda.device_count() == 0:
        del os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"]
