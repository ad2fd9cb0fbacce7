"""Hydra's record of a run (``.hydra/``), written once the run is known to start.

Hydra itself writes ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` before the task
function runs, so a re-run that clcore then refuses (a typo, a folder holding another experiment)
overwrote the record of the finished run in that folder with the refused config. clrun sets
``hydra.output_subdir: null`` (``configs/hydra/default.yaml``) and the task loop calls
``write_hydra_record`` after the pre-flight check passed and the folder's lock is held: the same
three files, in the same place (the sweep aggregate reads ``overrides.yaml``; Lightning's DDP
launcher re-runs the command from its overrides when ``output_subdir`` is null).

``remove_fresh_traces`` undoes what Hydra did before a refused run: the empty job log file and
the folder it created for it, so that a refused run leaves no folder behind.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from clcore.utils.atomic import write_text_atomic

RECORD_DIR = ".hydra"


def _hydra_config() -> DictConfig | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def write_hydra_record(task_cfg: DictConfig, output_dir: Path) -> None:
    """``<output_dir>/.hydra/{config,hydra,overrides}.yaml`` as Hydra writes them; nothing outside a Hydra job."""
    hydra_cfg = _hydra_config()
    if hydra_cfg is None:
        return
    folder = Path(output_dir) / RECORD_DIR
    write_text_atomic(folder / "config.yaml", OmegaConf.to_yaml(task_cfg))
    write_text_atomic(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    write_text_atomic(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task))


def remove_fresh_traces() -> None:
    """After a refusal: remove the folder Hydra made for it, when it holds nothing but the job's
    empty log file. A folder holding anything else (an earlier run, a run in progress) is left as it was."""
    hydra_cfg = _hydra_config()
    if hydra_cfg is None:
        return
    output_dir = Path(hydra_cfg.runtime.output_dir)
    log_file = output_dir / f"{hydra_cfg.job.name}.log"
    try:
        fresh = [entry.name for entry in os.scandir(output_dir)] == [log_file.name]
    except OSError:
        return
    # Only a folder holding nothing but an empty log is this run's own: in a folder in use by
    # another run (refused by its lock) the empty log may be the holder's, still open.
    if fresh and log_file.is_file() and log_file.stat().st_size == 0:
        _close_handlers_of(log_file)
        log_file.unlink()
        try:
            output_dir.rmdir()
        except OSError:
            pass


def _close_handlers_of(path: Path) -> None:
    """Hydra's file handler keeps the log open; close it so nothing re-creates the file."""
    for logger in (logging.getLogger(), *logging.Logger.manager.loggerDict.values()):
        for handler in list(getattr(logger, "handlers", [])):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path.resolve():
                handler.close()
                logger.removeHandler(handler)
