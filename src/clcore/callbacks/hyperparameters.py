"""The run's composed config as the loggers' hyperparameters (W&B config, TensorBoard hparams)."""

from __future__ import annotations

from pathlib import Path

from clcore.callbacks.base import CLCallback

# The run's results that TensorBoard's HParams tab shows beside its settings.
FINAL_METRICS = ("average_accuracy", "bwt", "average_forgetting", "fwt")


class LogHyperparameters(CLCallback):
    """Hands ``<output>/config.yaml``, the resolved config the task loop writes before training, to
    every logger once per run, so runs can be filtered and compared by any setting in the W&B or
    TensorBoard interface (``CSVLogger`` writes it to ``logs/hparams.yaml``).

    Read from the file rather than passed in: callbacks are built from the config and never see
    it whole, and the file is what the run really used.

    At the end of the sequence TensorBoard gets the hyperparameters again with the final metrics
    (``hparams/average_accuracy``, ``hparams/bwt``, ...), which is what its HParams tab tabulates:
    one row per run, its settings beside its results.
    """

    def __init__(self) -> None:
        self._logged = False

    def on_train_start(self, trainer, pl_module) -> None:
        path = Path(trainer.default_root_dir) / "config.yaml"
        if self._logged or not trainer.loggers or not path.is_file():
            return
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        for logger in trainer.loggers:
            logger.log_hyperparams(config)
        self._logged = True

    def on_sequence_end(self, trainer, algorithm, results) -> None:
        path = Path(trainer.default_root_dir) / "config.yaml"
        if not trainer.is_global_zero or not path.is_file() or not results.tasks_done:
            return
        from lightning.pytorch.loggers import TensorBoardLogger
        from omegaconf import OmegaConf

        boards = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not boards:
            return
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        summary = results.summary()
        final = {f"hparams/{name}": summary[name] for name in FINAL_METRICS if _is_number(summary.get(name))}
        for board in boards:
            board.log_hyperparams(config, metrics=final)
            board.save()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
