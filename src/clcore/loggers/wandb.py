"""Lightning's Weights & Biases logger, quiet, and naming each job of a sweep after what it changes.

- Lightning hands ``anonymous=None`` to ``wandb.init`` even when the user never set it, and wandb
  0.2x answers every run with "The anonymous setting has no effect and will be removed". The
  setting is only passed on when it was given.
- With ``name: ${name}`` and ``group: ${name}`` the jobs of a seed sweep were indistinguishable
  runs in one group of every sweep ever run of that experiment. Inside a Hydra job the run is named
  ``<name> <the job's command-line overrides>`` (``hat_pmnist seed=2``), and the jobs of a
  multirun are grouped by their sweep (``<name> <sweep folder>``), so that one sweep is one group.
  Outside Hydra (a notebook) the configured name and group stay as they are.
- A run resumed after a kill continues its W&B run (``continue_after``): the run id is kept in
  ``<save_dir>/wandb/clcore_run_id`` and the run is opened again with ``resume="allow"``; a fresh
  start in the same folder gets a new id, so it never appends to the run it replaces. The
  interrupted task's points after the checkpoint stay in W&B's history (it keeps what it got), but
  every point is plotted at its sequence-wide ``trainer/global_step``, where the resumed run logs
  the same steps again.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from clcore.utils.atomic import write_text_atomic

RUN_ID_FILE = "clcore_run_id"


class QuietWandbLogger(WandbLogger):
    """``lightning.pytorch.loggers.WandbLogger``: no unset ``anonymous`` passed to ``wandb.init``;
    run name and group from the Hydra job (``job_identity``) unless ``name_from_job=False``."""

    def __init__(self, *args, name_from_job: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._configured_id = self._wandb_init.get("id")  # a run id (or version) set by the user
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
        identity = job_identity(self._wandb_init.get("name")) if name_from_job else None
        if identity is not None:
            self._wandb_init["name"], group = identity
            self._name = self._wandb_init["name"]
            if group is not None:
                self._wandb_init["group"] = group

    def continue_after(self, last_step: int | None) -> None:
        """Before the run opens: a run resumed after ``last_step`` reopens its W&B run by id, a
        fresh one (None) gets a new id. An id set in the config is left as it is."""
        if self._configured_id is not None:
            return
        id_file = Path(self.save_dir or ".") / "wandb" / RUN_ID_FILE
        if last_step is not None and id_file.is_file():
            run_id = id_file.read_text().strip()
        else:  # from the OS's randomness: no draw from the run's random number generators
            run_id = secrets.token_hex(4)
            write_text_atomic(id_file, run_id + "\n")
        self._wandb_init.update(id=run_id, resume="allow")
        self._id = run_id


def job_identity(name: str | None) -> tuple[str, str | None] | None:
    """``(run name, sweep group or None)`` of the running Hydra job; None outside one."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return None
    if not HydraConfig.initialized():
        return None
    job = HydraConfig.get()
    overrides = [o for o in job.overrides.task if not o.split("=", 1)[0].lstrip("+~").startswith("hydra.")]
    run_name = " ".join([str(name or job.job.name), *overrides])
    group = f"{name or job.job.name} {job.sweep.dir}" if job.mode == RunMode.MULTIRUN else None
    return run_name, group
