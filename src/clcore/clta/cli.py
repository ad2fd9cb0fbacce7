"""``clta``: the Hydra entry point of the task-arithmetic protocol. ``clta --help`` lists the config groups.

Its own config tree, ``clcore/configs/ta`` (primary config ``task_arithmetic.yaml``; groups
``model``, ``dataset``, ``experiment``), so that ``clta experiment=...`` and ``clrun experiment=...``
never see each other's options.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


def main() -> None:
    """The ``clta`` command: Hydra's app (``hydra_app``), then, when it succeeded, an exit without
    Python's teardown (``clcore.utils.fast_exit``); a failure leaves the normal way, non-zero."""
    hydra_app()
    from clcore.utils.fast_exit import exit_without_teardown

    exit_without_teardown()


@hydra.main(version_base="1.3", config_path="pkg://clcore.configs.ta", config_name="task_arithmetic")
def hydra_app(cfg: DictConfig) -> float | None:
    # Imported here so that `clta --help` and config errors answer before torch loads.
    from clcore.benchmarks.errors import DamagedDataError, DataNotFoundError
    from clcore.clrun.cli import RefusedConfig
    from clcore.clta import run_protocol
    from clcore.config_rules import ConfigError

    try:
        results = run_protocol(cfg)
    except (ConfigError, DataNotFoundError, DamagedDataError) as error:
        # the message names every problem and what to do; a traceback through clcore would bury it
        raise RefusedConfig(str(error)) from error
    # What a Hydra sweeper optimises: the normalised task-addition accuracy of the first mode's first method.
    first_mode = next(iter(results["modes"].values()))
    return next(iter(first_mode["addition"].values()))["normalized"]


if __name__ == "__main__":
    main()
