"""``clrun``: the Hydra entry point, and ``compose``: the same config for notebooks and other code.

``clrun --help`` lists the config groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf, open_dict

# Where clrun's configs live (package data, so a non-editable install finds them) and the root one.
CONFIG_MODULE = "clcore.configs"
CONFIG_NAME = "config"


class RefusedConfig(CompactHydraException):
    """The configuration was refused before anything ran (a ``ConfigError``).

    Hydra prints the message of this exception alone: the problems and their fixes are all the
    user needs, a traceback through clcore would only bury them.
    """


class RunStopped(CompactHydraException):
    """The run stopped on a condition its message fully explains (a full disk: which path, what to
    do); Hydra prints the message alone, ``results/FAILED`` holds it."""


def main() -> None:
    """The ``clrun`` command: Hydra's app (``hydra_app``), then, when it succeeded, an exit
    without Python's teardown (``clcore.utils.fast_exit``: 1.3-1.7 s of a short run).

    A failure (a refused config, an exception, Hydra's ``sys.exit(1)``) never reaches the fast
    exit: it leaves the normal way, with its non-zero status.
    """
    hydra_app()
    from clcore.utils.fast_exit import exit_without_teardown

    exit_without_teardown()


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME)
def hydra_app(cfg: DictConfig) -> float | None:
    """One run (one job of a sweep): ``run_sequence`` on Hydra's composed ``cfg``.

    A refused config leaves the output folder as it was (``hydra_files.remove_fresh_traces``); a
    stop signal (SIGTERM from a scheduler) ends it as ``StoppedBySignal``, a failure that says how
    to continue (``clcore.clrun.signals``).
    """
    # Imported here so that `clrun --help` and config errors answer before torch/lightning load.
    from clcore.clrun import signals
    from clcore.clrun.hydra_files import remove_fresh_traces
    from clcore.clrun.task_loop import run_sequence
    from clcore.config_rules import ConfigError
    from clcore.utils.atomic import DiskFullError

    signals.raise_if_stop_requested()
    try:
        with signals.stop_on_signals():
            results = run_sequence(cfg)
    except ConfigError as error:
        remove_fresh_traces()
        raise RefusedConfig(str(error)) from error
    except signals.Signalled as signalled:
        raise signals.StoppedBySignal(_stopped_message(cfg, signalled)) from None
    except DiskFullError as error:
        raise RunStopped(f"{error.strerror}") from None
    # The return value is what Hydra sweepers (Optuna) optimise: the final average accuracy.
    return results.summary()["average_accuracy"]


def _stopped_message(cfg: DictConfig, signalled) -> str:
    from clcore.clrun.checkpoint import latest_checkpoint
    from clcore.clrun.signals import stopped_message

    output_dir = Path(cfg.paths.output_dir)
    latest = latest_checkpoint(output_dir)
    tasks_saved = int(latest.stem.split("_")[1]) if latest is not None else 0
    num_tasks = cfg.get("benchmark", {}).get("num_tasks")
    return stopped_message(
        signalled, output_dir, tasks_saved, num_tasks if isinstance(num_tasks, int) else None
    )


def compose(overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> DictConfig:
    """The config ``clrun <overrides>`` would run, composed from the packaged ``clcore.configs``.

    ``output_dir``: the run's folder (``paths.output_dir``). Without it (and without a
    ``paths.output_dir=...`` override) it is the folder ``clrun`` would create,
    ``hydra.run.dir`` relative to the working directory (``outputs/<name>/<date>_<time>``).
    Hydra's global state is restored afterwards, so this also works inside a running Hydra app.
    """
    from hydra import compose as compose_config
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    overrides = [*overrides, *([f"paths.output_dir={output_dir}"] if output_dir is not None else [])]
    previous = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose_config(config_name=CONFIG_NAME, overrides=overrides, return_hydra_config=True)
    finally:
        restore_gh_from_backup(previous)
    # paths.output_dir defaults to ${hydra:runtime.output_dir}, which only a running Hydra job resolves.
    if str(OmegaConf.to_container(cfg.paths)["output_dir"]).startswith("${hydra:"):
        cfg.paths.output_dir = str(cfg.hydra.run.dir)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


if __name__ == "__main__":
    main()
