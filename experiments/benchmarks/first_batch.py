"""A callback that writes the wall-clock time of the first training batch (start-up measurement)."""

import time
from pathlib import Path

from lightning import Callback


class FirstBatchMarker(Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.path.exists():
            self.path.write_text(repr(time.time()))
