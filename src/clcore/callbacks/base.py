"""The continual-learning callback protocol, on top of Lightning's ``Callback``."""

from __future__ import annotations

from lightning import Callback, LightningModule, Trainer

from clcore.metrics.results import ContinualResults


class CLCallback(Callback):
    """A Lightning callback that also hears about whole tasks and the whole sequence.

    ``clcore.clrun.task_loop`` calls ``on_task_end`` after task ``task_id`` (0-based) has trained and
    been tested on every seen task (``results`` then holds its row of the accuracy matrix), and
    ``on_sequence_end`` once after the last task. Any object with these methods works; this
    base class only documents them. Add one from the command line:
    ``clrun +callbacks.mine._target_=my_package.MyCallback``.
    """

    def on_task_end(
        self, trainer: Trainer, algorithm: LightningModule, task_id: int, results: ContinualResults
    ) -> None:
        """After task ``task_id`` trained and was tested."""

    def on_sequence_end(
        self, trainer: Trainer, algorithm: LightningModule, results: ContinualResults
    ) -> None:
        """After the last task."""
