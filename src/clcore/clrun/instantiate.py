"""Building the run's objects from the composed config with Hydra ``instantiate``."""

from __future__ import annotations

import inspect
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf


def instantiate_with_defaults(cfg: DictConfig, **defaults: Any) -> Any:
    """Instantiate ``cfg``, filling constructor arguments the config leaves unset from ``defaults``.

    A backbone's input size or a per-task batch-norm count follow from the benchmark; a user may
    still set them explicitly (an explicit non-null value wins).
    """
    target = get_class(cfg._target_)
    accepted = inspect.signature(target).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    fill = {
        name: value
        for name, value in defaults.items()
        if (name in accepted or takes_kwargs) and OmegaConf.select(cfg, name, default=None) is None
    }
    return instantiate(cfg, **fill)


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` in a config group mapping (callbacks, loggers)."""
    if not cfg:
        return []
    return [
        instantiate(entry) for entry in cfg.values() if isinstance(entry, DictConfig) and "_target_" in entry
    ]
