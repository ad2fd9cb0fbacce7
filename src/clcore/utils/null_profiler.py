"""A profiler that does nothing and costs nothing: clcore's default in place of Lightning's."""

from __future__ import annotations

from contextlib import nullcontext

from lightning.pytorch.profilers import PassThroughProfiler

_NOTHING = nullcontext()


class NullProfiler(PassThroughProfiler):
    """Lightning's ``PassThroughProfiler``, minus the cost of entering its context.

    The Trainer wraps every hook call in ``with profiler.profile(name):``, about 45 times per
    training step. ``PassThroughProfiler`` inherits a generator-based context manager, built
    and torn down each time although its start and stop do nothing; this returns one shared
    ``nullcontext``. The pipeline uses it when ``trainer.profiler`` is null; set
    ``trainer.profiler=simple`` (or ``advanced``, ``pytorch``) to profile a run.
    """

    def profile(self, action_name: str) -> nullcontext:
        return _NOTHING
