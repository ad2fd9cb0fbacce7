"""Lightning's callback entry points, looked up once per run instead of once per Trainer."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.fabric.utilities import registry


@contextmanager
def entry_points_looked_up_once() -> Iterator[None]:
    """Within the block, Lightning's external-callback lookup reads installed packages once.

    Every ``Trainer()`` calls ``_load_external_callbacks``, which asks
    ``importlib.metadata.entry_points`` for its ``callbacks_factory`` group: a read of every
    installed distribution's metadata (about 9 ms with 160 packages, more in larger
    environments), so once per task with the pipeline's Trainer per task. Installed packages do
    not change during a run, so the lookup's result is kept for the block. The factories it
    finds are still called by every Trainer: each Trainer gets its own callback instances.
    """
    original = getattr(registry, "entry_points", None)
    if original is None:  # a Lightning version that looks them up elsewhere: nothing to keep
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
