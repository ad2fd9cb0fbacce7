"""The pre-flight check: the composed config judged before anything trains, and what it built for the run.

A run that fails after an hour on a typo, or one problem per attempt, wastes more time than the
checks cost. ``preflight`` collects every problem and raises one ``ConfigError`` listing all of
them, each with what to change. The rules of a class are the class's own ``config_problems``
(``clcore.config_rules``), read here from the config's plain options before anything is built:
the benchmark's (with its data source's registry entry: class count, root), the backbone's (for a
run of ``benchmark.num_tasks`` tasks) and the algorithm's (in the setting of the configured heads'
paradigm and backbone class). This module adds only what belongs to no class: importable
``_target_``s of the right base class, options a constructor does not take, the optimiser, the
trainer's bounds, the seed, and whether the output folder can be resumed from.

Last it loads the benchmark's data (missing files are named) and builds the benchmark, once: the
``RunPlan`` it returns hands that benchmark, the checkpoint to resume from and the config hash to
the task loop, which neither loads the data nor reads the output folder again.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.utils import _locate  # hydra.utils.get_class would also log each failure
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.optim.lr_scheduler import ReduceLROnPlateau

from clcore.algorithms.base import CLAlgorithm
from clcore.backbones.base import CLBackbone
from clcore.benchmarks.base import CLBenchmark
from clcore.benchmarks.errors import DataNotFoundError
from clcore.benchmarks.sources import DEFAULT_MEMORY_BUDGET_GB, load_source
from clcore.clrun import resume
from clcore.clrun.construction import bare_trainer_problems, optimizer_problems
from clcore.config_rules import ConfigError, is_int, is_number, raise_if_problems
from clcore.config_types import accepted_options as _accepted_options
from clcore.config_types import option_type_problems, problems_with_types_first, run_option_problems
from clcore.heads.base import CLHeads

__all__ = ["ConfigError", "RunPlan", "preflight"]

# Config group -> the base class its _target_ must extend.
GROUP_BASES = {
    "algorithm": CLAlgorithm,
    "backbone": CLBackbone,
    "paradigm": CLHeads,
    "benchmark": CLBenchmark,
}


@dataclass(frozen=True)
class RunPlan:
    """What the pre-flight check established, for the task loop to use as it is.

    ``benchmark``: built from ``cfg.benchmark`` with its data loaded. ``resume_from``: the
    checkpoint the run continues from (None: start fresh). ``config_hash``: the configuration's
    hash, written into every checkpoint (``clcore.clrun.resume.config_hash``).
    """

    benchmark: CLBenchmark
    resume_from: Path | None
    config_hash: str
    data_fingerprint: str | None = None


def preflight(cfg: DictConfig) -> RunPlan:
    """Check ``cfg`` and load its benchmark; raise one ``ConfigError`` listing every problem."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception as error:
        raise ConfigError([f"the config cannot be resolved: {error}"]) from error
    located, problems = _located_groups(plain)
    benchmark_problems = _benchmark_problems(plain, located["benchmark"])
    problems += benchmark_problems
    problems += _model_problems(plain, located) + _paradigm_problems(plain, located)
    problems += _training_problems(plain)
    problems += _trainer_problems(plain) + _monitor_problems(plain, located)
    # Groups with a problem already (``<group>.<key>...``) are not constructed: one message per fault.
    flawed = frozenset(
        g for g in ("optimizer", "lr_scheduler", "trainer") if any(p.startswith(f"{g}.") for p in problems)
    )
    problems += optimizer_problems(cfg, skip=flawed)
    # Last, as they read the data set: missing files are named whatever else is wrong.
    data_problems = _data_file_problems(_options(plain, "benchmark"))
    problems += data_problems
    benchmark = None
    if located["benchmark"] is not None and not benchmark_problems and not data_problems:
        benchmark, build_problems = _loaded_benchmark(cfg.benchmark)
        problems += build_problems
        algorithm = located["algorithm"]
        if benchmark is not None and isinstance(algorithm, type) and issubclass(algorithm, CLAlgorithm):
            problems += algorithm.benchmark_problems(_options(plain, "algorithm"), benchmark)
    # With the data loaded: a checkpoint written on other data is not continued from.
    fingerprint = benchmark.data_fingerprint() if benchmark is not None else None
    resume_from, resume_problems = _resume_plan(cfg, fingerprint)
    problems += resume_problems
    if problems and "trainer" not in flawed:  # alone, build_run meets a Trainer refusal just the same
        problems += bare_trainer_problems(cfg)
    raise_if_problems(problems)
    return RunPlan(
        benchmark=benchmark,
        resume_from=resume_from,
        config_hash=resume.config_hash(cfg),
        data_fingerprint=fingerprint,
    )


# ---- targets: importable, and of the right base class -------------------------------------------
def _targets(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted path, target)`` for every ``_target_`` in the config."""
    if isinstance(node, dict):
        if isinstance(node.get("_target_"), str):
            yield path, node["_target_"]
        for key, value in node.items():
            yield from _targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _targets(value, f"{path}[{index}]")


def _locatable(target: str) -> Any | None:
    try:
        return _locate(target)
    except Exception:
        return None


def _located_groups(plain: dict) -> tuple[dict[str, Any], list[str]]:
    """Each group's located ``_target_`` (None where missing or wrong), and every target problem."""
    problems = [
        f"{path}._target_={target!r} cannot be imported: check the spelling, or install the package that provides it"
        for path, target in _targets(plain)
        if _locatable(target) is None
    ]
    located = {}
    for group, base in GROUP_BASES.items():
        target = (plain.get(group) or {}).get("_target_")
        located[group] = _locatable(target) if isinstance(target, str) else None
        if target is None:
            problems.append(f"{group}._target_ is not set: choose a {group} config ({group}=<name>)")
        # A factory function is fine (it may return the right type); a class must be the right one.
        elif isinstance(located[group], type) and not issubclass(located[group], base):
            problems.append(
                f"{group}._target_={target!r} is a {located[group].__name__}, not a {base.__name__} subclass"
            )
            located[group] = None
    return located, problems


# ---- the classes' own rules, read from the config's plain options ---------------------------------
def _options(plain: dict, group: str) -> dict:
    """A group's constructor options: its keys without Hydra's (``_target_``, ``_partial_``, ...)."""
    node = plain.get(group)
    return (
        {key: value for key, value in node.items() if not str(key).startswith("_")}
        if isinstance(node, dict)
        else {}
    )


def _benchmark_problems(plain: dict, benchmark_class: Any) -> list[str]:
    """The options' types (the constructor's annotations), then the benchmark's rules on them."""
    if not isinstance(benchmark_class, type):
        return []
    options = _options(plain, "benchmark")
    return problems_with_types_first(
        "benchmark", benchmark_class, options, benchmark_class.config_problems
    ) + _unknown_option_problems("benchmark", benchmark_class, options)


def _model_problems(plain: dict, located: dict[str, Any]) -> list[str]:
    """The backbone's rules for this run, and the algorithm's in this paradigm with this backbone."""
    backbone, heads, algorithm = (
        located[group] if isinstance(located[group], type) else None
        for group in ("backbone", "paradigm", "algorithm")
    )
    run_tasks = _options(plain, "benchmark").get("num_tasks")
    # Null in the config: the task loop fills these in from the benchmark (task_loop.build).
    from_benchmark = ("input_dim", "in_channels", "num_tasks")
    problems = []
    if backbone is not None:
        options = _options(plain, "backbone")
        given = {
            key: value for key, value in options.items() if value is not None or key not in from_benchmark
        }
        problems += problems_with_types_first(
            "backbone",
            backbone,
            given,
            lambda kept: backbone.config_problems(kept, num_tasks=run_tasks if is_int(run_tasks) else None),
        )
        problems += _unknown_option_problems("backbone", backbone, options)
    if heads is not None:
        options = _options(plain, "paradigm")
        given = {
            key: value for key, value in options.items() if value is not None or key not in from_benchmark
        }
        problems += option_type_problems("paradigm", heads, given)
        problems += _unknown_option_problems("paradigm", heads, options)
    if algorithm is not None:
        options = _options(plain, "algorithm")
        paradigm = (heads.paradigm or None) if heads is not None else None
        # what the task loop hands every algorithm's constructor besides its own options
        supplied = {
            "num_tasks": run_tasks if is_int(run_tasks) else None,
            "lr_scheduler": plain.get("lr_scheduler"),
        }
        problems += problems_with_types_first(
            "algorithm",
            algorithm,
            options,
            lambda kept: algorithm.config_problems(
                {**kept, **supplied}, paradigm=paradigm, backbone_type=backbone
            ),
        )
        problems += _unknown_option_problems("algorithm", algorithm, options)
    return problems


def _paradigm_problems(plain: dict, located: dict[str, Any]) -> list[str]:
    """A benchmark's rules for a paradigm (``paradigm_problems``, e.g. DIL over data sets of unequal
    class counts in a multi-data-set sequence), where the benchmark class states any."""
    benchmark, heads = located["benchmark"], located["paradigm"]
    rules = getattr(benchmark, "paradigm_problems", None)
    if rules is None or not isinstance(heads, type):
        return []
    return rules(_options(plain, "benchmark"), heads.paradigm or None)


def _unknown_option_problems(group: str, cls: type, options: dict) -> list[str]:
    """Config keys the constructor does not take: Hydra would fail on them when building the run."""
    accepted = _accepted_options(cls)
    if accepted is None:
        return []
    problems = []
    for key in sorted(set(options) - accepted):
        close = difflib.get_close_matches(key, sorted(accepted), n=1)
        fix = f"did you mean {group}.{close[0]}?" if close else f"it takes {', '.join(sorted(accepted))}"
        problems.append(
            f"{group}.{key} is not an option of {cls.__name__}: remove it, or fix its name ({fix})"
        )
    return problems


# ---- what belongs to no class: optimiser, trainer, seed ------------------------------------------
def _training_problems(plain: dict) -> list[str]:
    """The optimiser's and scheduler's option types (torch annotates its classes) and ranges, the
    trainer's bounds, and the top-level keys (``clcore.config_types.RunOptions``)."""

    def optimizer_rules(optimizer: dict) -> list[str]:
        found = []
        if "lr" in optimizer:
            lr = optimizer["lr"]
            if not is_number(lr) or not math.isfinite(lr) or lr <= 0:
                found.append(
                    f"optimizer.lr={lr!r}: the learning rate must be a positive finite number (e.g. optimizer.lr=0.001)"
                )
        for key in ("weight_decay", "momentum"):
            value = optimizer.get(key)
            if value is not None and (not is_number(value) or not math.isfinite(value) or value < 0):
                found.append(f"optimizer.{key}={value!r}: must be a finite number >= 0")
        return found

    targets = {group: (plain.get(group) or {}).get("_target_") for group in ("optimizer", "lr_scheduler")}
    located = {
        group: _locatable(target) if isinstance(target, str) else None for group, target in targets.items()
    }
    problems = problems_with_types_first(
        "optimizer", located["optimizer"], _options(plain, "optimizer"), optimizer_rules
    )
    problems += option_type_problems("lr_scheduler", located["lr_scheduler"], _options(plain, "lr_scheduler"))
    trainer = plain.get("trainer") or {}
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    bounded_by_steps = is_int(max_steps) and max_steps >= 1
    if max_steps not in (None, -1) and not bounded_by_steps:
        problems.append(f"trainer.max_steps={max_steps!r}: must be an integer >= 1, or -1 for no step limit")
    if not (is_int(max_epochs) and max_epochs >= 1) and not (max_epochs in (None, -1) and bounded_by_steps):
        problems.append(
            f"trainer.max_epochs={max_epochs!r}: each task must train for a bounded time: an integer >= 1 (or set trainer.max_steps)"
        )
    limit = trainer.get("limit_train_batches")
    if limit is not None and (not is_number(limit) or limit <= 0):
        problems.append(
            f"trainer.limit_train_batches={limit!r}: would train on nothing; use a fraction in (0, 1], a count >= 1, or null"
        )
    return problems + run_option_problems(plain)


def _trainer_problems(plain: dict) -> list[str]:
    """Lightning ``Trainer`` options: names it takes, and the bounds it checks only once training
    has started (or never: ``accumulate_grad_batches=0``, more CPU processes than cores)."""
    trainer = {
        key: value for key, value in (plain.get("trainer") or {}).items() if not str(key).startswith("_")
    }
    from lightning import Trainer

    problems = _unknown_option_problems("trainer", Trainer, trainer)
    # Types from Trainer's own annotations (precision's choices, booleans, ...); the bounds below
    # only look at keys whose type is right.
    typed = option_type_problems("trainer", Trainer, trainer)
    problems += typed
    trainer = {
        key: value
        for key, value in trainer.items()
        if not any(p.startswith(f"trainer.{key}=") for p in typed)
    }
    for key, least in (
        ("accumulate_grad_batches", 1),
        ("log_every_n_steps", 1),
        ("check_val_every_n_epoch", 1),
        ("min_epochs", 0),
        ("num_sanity_val_steps", -1),
    ):
        value = trainer.get(key)
        if value is not None and not (is_int(value) and value >= least):
            problems.append(f"trainer.{key}={value!r}: must be an integer >= {least}")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and not (is_number(clip) and math.isfinite(clip) and clip >= 0):
        problems.append(
            f"trainer.gradient_clip_val={clip!r}: must be a finite number >= 0, or null for no clipping"
        )
    devices, accelerator = trainer.get("devices"), str(trainer.get("accelerator", "auto")).lower()
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not _gpu_available())
    cores = os.cpu_count() or 1
    if on_cpu and is_int(devices) and devices > cores:
        problems.append(
            f"trainer.devices={devices}: on CPU each device is a process of its own and this machine has "
            f"{cores} core(s); use trainer.devices={cores} or fewer"
        )
    return problems


def _gpu_available() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())


def _monitor_problems(plain: dict, located: dict[str, Any]) -> list[str]:
    """Every metric a scheduler or callback monitors must be one the algorithm logs, under the
    same name in every task (``CLAlgorithm.MONITORABLE_METRICS``), and validation metrics need a
    validation split: otherwise Lightning fails when the first epoch ends, or never stops early."""
    algorithm = located["algorithm"] if isinstance(located["algorithm"], type) else None
    if algorithm is None or not issubclass(algorithm, CLAlgorithm):
        return []
    benchmark = located["benchmark"] if isinstance(located["benchmark"], type) else None
    options = _options(plain, "benchmark")
    val_fraction = options.get("val_fraction", _default_of(benchmark, "val_fraction"))
    monitors = []  # (where, metric name)
    scheduler = plain.get("lr_scheduler") or {}
    scheduler_class = (
        _locatable(scheduler["_target_"]) if isinstance(scheduler.get("_target_"), str) else None
    )
    if isinstance(scheduler_class, type) and issubclass(scheduler_class, ReduceLROnPlateau):
        name = _options(plain, "algorithm").get(
            "lr_scheduler_monitor", _default_of(algorithm, "lr_scheduler_monitor")
        )
        monitors.append(("algorithm.lr_scheduler_monitor (for the plateau scheduler)", name))
    for key, callback in (plain.get("callbacks") or {}).items():
        if isinstance(callback, dict) and callback.get("monitor") is not None:
            monitors.append((f"callbacks.{key}.monitor", callback["monitor"]))
    problems = []
    for where, name in monitors:
        if name not in algorithm.MONITORABLE_METRICS:
            problems.append(
                f"{where}={name!r} is never logged by {algorithm.__name__}: monitor one of "
                f"{', '.join(algorithm.MONITORABLE_METRICS)}"
            )
        elif str(name).startswith("val/") and is_number(val_fraction) and val_fraction == 0:
            problems.append(
                f"{where}={name!r} needs validation data, but benchmark.val_fraction=0 holds none out: "
                f"set benchmark.val_fraction (e.g. 0.1), or monitor another metric"
            )
    return problems


def _default_of(cls: type | None, parameter: str) -> Any:
    """The constructor default of ``parameter`` (None when absent or without one)."""
    if cls is None:
        return None
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None and parameter in inspect.signature(init).parameters:
            default = inspect.signature(init).parameters[parameter].default
            return None if default is inspect.Parameter.empty else default
    return None


def _resume_plan(cfg: DictConfig, data_fingerprint: str | None) -> tuple[Path | None, list[str]]:
    try:
        return resume.resume_plan(cfg, data_fingerprint)
    except Exception as error:  # e.g. an unreadable output folder
        return None, [f"cannot check the output folder for a run to resume: {error}"]


# ---- the data, loaded once ------------------------------------------------------------------------
def _data_file_problems(options: dict) -> list[str]:
    """Missing data files, named, whatever else is wrong with the benchmark config: of its ``source``,
    or of every data set a multi-data-set benchmark lists in ``sources`` (each missing one named).

    The data set stays in ``load_source``'s cache, so building the benchmark reads no file again.
    A ``torchvision:<ClassName>`` source is opened at ``root`` to find its entry (its failure is the
    benchmark's rules' to report); data is loaded with the run's ``memory_budget_gb``, so a source
    read image by image is held in memory or streamed as the run will have it.
    """
    budget = options.get("memory_budget_gb", DEFAULT_MEMORY_BUDGET_GB)
    if not is_number(budget) or not budget > 0:
        budget = DEFAULT_MEMORY_BUDGET_GB  # reported by the benchmark's rules
    download = bool(options.get("download", False))
    root, sources = options.get("root"), options.get("sources")
    names = sources if isinstance(sources, list) else [options.get("source")]
    problems = []
    for name in dict.fromkeys(name for name in names if isinstance(name, str)):  # each once, in order
        entry = CLBenchmark.source_entry({"source": name, "root": root, "download": download})
        if entry is None or (entry.needs_root and root is None):
            continue  # reported by the benchmark's rules
        try:
            load_source(entry.name, None if root is None else str(root), download, budget)
        except (DataNotFoundError, ValueError) as error:  # ValueError: data unlike its registry entry
            problems.append(f"benchmark: {error}")
    return problems


def _loaded_benchmark(benchmark_cfg: DictConfig) -> tuple[CLBenchmark | None, list[str]]:
    """The benchmark built on its data, or the problems only building it shows (from a factory target)."""
    try:
        benchmark = instantiate(benchmark_cfg)
        benchmark.load()
    except Exception as error:
        # Hydra wraps constructor errors; the user needs the constructor's own message.
        cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
        return None, cause.problems if isinstance(cause, ConfigError) else [f"benchmark: {cause}"]
    if not isinstance(benchmark, CLBenchmark):
        return None, [f"benchmark._target_ built a {type(benchmark).__name__}, not a CLBenchmark"]
    return benchmark, []
