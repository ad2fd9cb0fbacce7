"""A Lightning callback timing the training steps of a run, shared by the clrun and CLArena sides.

It imports only ``lightning``, so each peer's own venv can load it (the driver puts this folder on
``PYTHONPATH``). Train time per epoch runs from ``on_train_epoch_start`` to the end of the epoch's
last training batch: forward, backward, optimizer step and data loading, not validation. After every
test the running totals are written as JSON to ``$PEER_TIMER_JSON``.
"""

from __future__ import annotations

import json
import os
import time

from lightning import Callback


class TrainTimer(Callback):
    """Sums training seconds and training samples over all tasks of a sequence."""

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.train_samples = 0
        self.test_seconds = 0.0
        self._epoch_started = 0.0
        self._last_batch_end = 0.0
        self._test_started = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_started = self._last_batch_end = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._last_batch_end = time.perf_counter()
        self.train_samples += len(batch[0])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.train_seconds += self._last_batch_end - self._epoch_started

    def on_test_start(self, trainer, pl_module) -> None:
        self._test_started = time.perf_counter()

    def on_test_end(self, trainer, pl_module) -> None:
        self.test_seconds += time.perf_counter() - self._test_started
        path = os.environ.get("PEER_TIMER_JSON")
        if path:
            totals = {
                "train_seconds": self.train_seconds,
                "train_samples": self.train_samples,
                "test_seconds": self.test_seconds,
            }
            with open(path, "w") as stream:
                json.dump(totals, stream)
