"""Lightning's Weights & Biases logger, without a warning on every run.

Lightning hands ``anonymous=None`` to ``wandb.init`` even when the user never set it, and wandb
0.2x answers every run with "The anonymous setting has no effect and will be removed". The
setting is only passed on when it was given.
"""

from __future__ import annotations

from lightning.pytorch.loggers import WandbLogger


class QuietWandbLogger(WandbLogger):
    """``lightning.pytorch.loggers.WandbLogger`` that leaves an unset ``anonymous`` out of ``wandb.init``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
