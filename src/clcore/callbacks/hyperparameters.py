"""The run's composed config as the loggers' hyperparameters (W&B config, TensorBoard hparams)."""

from __future__ import annotations

from pathlib import Path

from clcore.callbacks.base import CLCallback


class LogHyperparameters(CLCallback):
    """Hands ``<output>/config.yaml``, the resolved config the task loop writes before training, to
    every logger once per run, so runs can be filtered and compared by any setting in the W&B or
    TensorBoard interface (``CSVLogger`` writes it to ``logs/hparams.yaml``).

    Read from the file rather than passed in: callbacks are built from the config and never see
    it whole, and the file is what the run really used.
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
