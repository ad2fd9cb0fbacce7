"""Clocks that ``bench.py`` adds to a real ``clrun`` command (on ``PYTHONPATH``; no import of Lightning here).

- ``ImportClock``, a Hydra job callback (``+hydra.callbacks.bench_clock._target_=first_batch.ImportClock``):
  when the job starts it does the import that ``clrun``'s ``main`` does first (``clcore.clrun.task_loop``:
  torch, Lightning, clcore; Lightning first, timed on its own) and writes the wall-clock and CPU
  times around it, and those of the job's end (before Python's shutdown).
  The run itself is untouched; the import happens a few milliseconds earlier than it would.
- ``first_batch_marker``, a Lightning callback (``+callbacks.first_batch._target_=first_batch.first_batch_marker``):
  writes the wall-clock and CPU time of the first training batch and, by default, ends the process
  there (start-up measurement).

Both write JSON, and both keep this module free of Lightning so that loading it costs nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hydra.experimental.callback import Callback as HydraCallback


class ImportClock(HydraCallback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.times: dict[str, float] = {}

    def on_job_start(self, config, **kwargs) -> None:
        self._stamp("import_start")
        import lightning  # noqa: F401

        self._stamp("lightning_imported")
        import clcore.clrun.task_loop  # noqa: F401

        self._stamp("import_end")
        self.path.write_text(json.dumps(self.times))  # also for runs that end at their first batch

    def on_job_end(self, config, job_return, **kwargs) -> None:
        self._stamp("job_end")
        self.path.write_text(json.dumps(self.times))

    def _stamp(self, name: str) -> None:
        """Wall-clock time and the process's CPU seconds (less disturbed by other work on the machine)."""
        self.times[name] = time.time()
        self.times[f"{name}_cpu"] = time.process_time()


def first_batch_marker(path: str, exit_after: bool = True):
    """A callback writing the wall-clock time and the process's CPU seconds at the first training batch."""
    from lightning import Callback

    class FirstBatchMarker(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            Path(path).write_text(json.dumps({"wall": time.time(), "cpu": time.process_time()}))
            if exit_after:
                os._exit(0)  # the rest of the run is not part of start-up

    return FirstBatchMarker()
