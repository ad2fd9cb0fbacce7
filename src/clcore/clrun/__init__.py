"""``clrun``: the continual-learning application, a task loop on the library.

For notebooks and other code (loaded on first use, so ``clrun --help`` answers before torch loads):

    from clcore.clrun import compose, run_sequence
    results = run_sequence(compose(["experiment=hat_pmnist"], output_dir="runs/hat"))

- ``compose(overrides, output_dir)``: the config ``clrun`` would run;
- ``preflight(cfg) -> RunPlan``: every problem of a config at once (``ConfigError``), else the
  loaded benchmark, the checkpoint to resume from and the config hash (``clcore.clrun.checks``);
- ``run_sequence(cfg)``: the whole task sequence; ``build(cfg, benchmark)``: its benchmark and algorithm;
- ``main``: the ``clrun`` command itself.
"""

from __future__ import annotations

from clcore.utils.lazy_exports import lazy_exports

# public name -> the module that defines it
_EXPORTS = {
    "compose": "clcore.clrun.cli",
    "main": "clcore.clrun.cli",
    "preflight": "clcore.clrun.checks",
    "RunPlan": "clcore.clrun.checks",
    "ConfigError": "clcore.config_rules",
    "run_sequence": "clcore.clrun.task_loop",
    "build": "clcore.clrun.construction",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
