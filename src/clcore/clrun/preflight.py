"""Checks of the composed config before anything trains: every problem at once, each with its fix.

A run that fails after an hour on a typo, or one problem per attempt, wastes more time than the
checks cost. ``validate_config`` runs every check, collects what is wrong and raises one
``ConfigError`` listing all of it. Checks read the config as plain data, import each ``_target_``
(no object is built) and, last, load the benchmark's data (cached: ``build`` reuses it), which is
how missing files are found.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from hydra._internal.utils import _locate  # hydra.utils.get_class would also log each failure
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from clcore.algorithms.base import CLAlgorithm
from clcore.backbones.base import CLBackbone
from clcore.benchmarks.base import CLBenchmark
from clcore.benchmarks.errors import DataNotFoundError
from clcore.benchmarks.sources import load_source
from clcore.heads.base import CLHeads
from clcore.clrun.resume import resume_plan
from clcore.algorithms.tak.fisher_cache import REMOTE_PREFIXES
from clcore.task_arithmetic.merging import MERGE_METHODS

# Known without loading the data, so an impossible class split is reported before any loading.
SOURCE_NUM_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10, "cifar100": 100}


class ConfigError(ValueError):
    """The run cannot work as configured. ``problems`` lists each issue with what to change."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        listed = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(
            f"{len(self.problems)} problem(s) with the configuration; nothing was trained:\n{listed}"
        )


def validate_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` listing every problem of ``cfg``; return quietly when there is none."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception as error:
        raise ConfigError([f"the config cannot be resolved: {error}"]) from error
    problems = _target_problems(plain)
    benchmark_problems = _benchmark_problems(plain.get("benchmark") or {})
    problems += benchmark_problems
    problems += _training_problems(plain)
    problems += _combination_problems(plain)
    problems += _algorithm_option_problems(plain.get("algorithm") or {})
    problems += _resume_problems(cfg)
    # Last, as they load the data set (cached: ``build`` reuses it).
    data_problems = _data_file_problems(plain.get("benchmark") or {})
    problems += data_problems
    if (
        not benchmark_problems
        and not data_problems
        and not any(p.startswith("benchmark._target_") for p in problems)
    ):
        problems += _benchmark_build_problems(cfg.benchmark)
    if problems:
        raise ConfigError(problems)


# ---- individual checks: each returns its problems ---------------------------------------------
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


def _target_problems(plain: dict) -> list[str]:
    return [
        f"{path}._target_={target!r} cannot be imported: check the spelling, or install the package that provides it"
        for path, target in _targets(plain)
        if _locatable(target) is None
    ]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _benchmark_problems(benchmark: dict) -> list[str]:
    problems = []
    source = benchmark.get("source")
    if "source" in benchmark and source not in SOURCE_NUM_CLASSES:
        problems.append(
            f"benchmark.source={source!r} is unknown: choose one of {', '.join(SOURCE_NUM_CLASSES)}"
        )
    elif source != "digits" and benchmark.get("root") is None:
        problems.append(f"benchmark.root is not set: source {source!r} needs the folder that holds its files")
    num_tasks = benchmark.get("num_tasks")
    if not _is_int(num_tasks) or num_tasks < 1:
        problems.append(f"benchmark.num_tasks={num_tasks!r}: must be an integer >= 1")
    if "classes_per_task" in benchmark:
        per_task = benchmark["classes_per_task"]
        if not _is_int(per_task) or per_task < 1:
            problems.append(f"benchmark.classes_per_task={per_task!r}: must be an integer >= 1")
        elif _is_int(num_tasks) and num_tasks >= 1 and source in SOURCE_NUM_CLASSES:
            available = SOURCE_NUM_CLASSES[source]
            if num_tasks * per_task > available:
                problems.append(
                    f"benchmark.num_tasks={num_tasks} x benchmark.classes_per_task={per_task} = {num_tasks * per_task} "
                    f"classes, but {source} has {available}: lower one of them (e.g. benchmark.num_tasks={available // per_task})"
                )
    for key in ("batch_size", "eval_batch_size"):
        if key in benchmark and (not _is_int(benchmark[key]) or benchmark[key] < 1):
            problems.append(f"benchmark.{key}={benchmark[key]!r}: must be an integer >= 1")
    val_fraction = benchmark.get("val_fraction", 0.0)
    if not _is_number(val_fraction) or not 0.0 <= val_fraction < 1.0:
        problems.append(f"benchmark.val_fraction={val_fraction!r}: must be in [0, 1)")
    return problems


def _training_problems(plain: dict) -> list[str]:
    problems = []
    optimizer = plain.get("optimizer") or {}
    if "lr" in optimizer:
        lr = optimizer["lr"]
        if not _is_number(lr) or not math.isfinite(lr) or lr <= 0:
            problems.append(
                f"optimizer.lr={lr!r}: the learning rate must be a positive finite number (e.g. optimizer.lr=0.001)"
            )
    for key in ("weight_decay", "momentum"):
        value = optimizer.get(key)
        if value is not None and (not _is_number(value) or not math.isfinite(value) or value < 0):
            problems.append(f"optimizer.{key}={value!r}: must be a finite number >= 0")
    trainer = plain.get("trainer") or {}
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    bounded_by_steps = _is_int(max_steps) and max_steps >= 1
    if max_steps not in (None, -1) and not bounded_by_steps:
        problems.append(f"trainer.max_steps={max_steps!r}: must be an integer >= 1, or -1 for no step limit")
    if not (_is_int(max_epochs) and max_epochs >= 1) and not (max_epochs in (None, -1) and bounded_by_steps):
        problems.append(
            f"trainer.max_epochs={max_epochs!r}: each task must train for a bounded time: an integer >= 1 (or set trainer.max_steps)"
        )
    limit = trainer.get("limit_train_batches")
    if limit is not None and (not _is_number(limit) or limit <= 0):
        problems.append(
            f"trainer.limit_train_batches={limit!r}: would train on nothing; use a fraction in (0, 1], a count >= 1, or null"
        )
    seed = plain.get("seed")
    if not _is_int(seed) or not 0 <= seed < 2**32:
        problems.append(
            f"seed={seed!r}: must be an integer in [0, 2**32) (outside it Lightning silently draws a random seed)"
        )
    return problems


def _combination_problems(plain: dict) -> list[str]:
    """Algorithm x paradigm x backbone: what an algorithm declares it needs (classes only, no objects)."""
    located = {}
    problems = []
    for group, base in (
        ("algorithm", CLAlgorithm),
        ("backbone", CLBackbone),
        ("paradigm", CLHeads),
        ("benchmark", CLBenchmark),
    ):
        target = (plain.get(group) or {}).get("_target_")
        located[group] = _locatable(target) if isinstance(target, str) else None
        # A factory function is fine (it may return the right type); a class must be the right one.
        if isinstance(located[group], type) and not issubclass(located[group], base):
            problems.append(
                f"{group}._target_={target!r} is a {located[group].__name__}, not a {base.__name__} subclass"
            )
            located[group] = None
    algorithm, backbone, heads = located["algorithm"], located["backbone"], located["paradigm"]
    if not isinstance(algorithm, type):
        return problems
    paradigm = getattr(heads, "paradigm", None) if isinstance(heads, type) else None
    if paradigm and paradigm not in algorithm.supported_paradigms:
        problems.append(
            f"algorithm {algorithm.__name__} does not support paradigm={paradigm}: it supports "
            f"{', '.join(algorithm.supported_paradigms)}. Use paradigm={algorithm.supported_paradigms[0]} or another algorithm"
        )
    backbone_tasks, run_tasks = (
        (plain.get("backbone") or {}).get("num_tasks"),
        (plain.get("benchmark") or {}).get("num_tasks"),
    )
    if _is_int(backbone_tasks) and _is_int(run_tasks) and backbone_tasks < run_tasks:
        problems.append(
            f"backbone.num_tasks={backbone_tasks} has room for fewer tasks than benchmark.num_tasks={run_tasks}: "
            f"set backbone.num_tasks=null (it follows the benchmark) or >= {run_tasks}"
        )
    required = getattr(algorithm, "required_backbone_type", None)
    if required is not None and isinstance(backbone, type) and not issubclass(backbone, required):
        problems.append(
            f"algorithm {algorithm.__name__} needs a backbone that is a {required.__name__}, but backbone._target_ "
            f"is {backbone.__name__}: choose a backbone config whose _target_ is a {required.__name__} subclass"
        )
    return problems


def _algorithm_option_problems(algorithm: dict) -> list[str]:
    """Task-arithmetic knobs, where an algorithm has them: merge method, merge coefficient, caches."""
    problems = []
    merging = algorithm.get("merging")
    method = merging.get("method") if isinstance(merging, dict) else merging
    if merging is not None and method not in MERGE_METHODS:
        problems.append(
            f"algorithm.merging={method!r} is not a merge method: choose one of {', '.join(sorted(MERGE_METHODS))}"
        )
    if "alpha_merging" in algorithm:
        alpha = algorithm["alpha_merging"]
        if alpha != "one" and (not _is_number(alpha) or not math.isfinite(alpha) or alpha <= 0):
            problems.append(f"algorithm.alpha_merging={alpha!r}: must be a positive finite number or 'one'")
    for key, value in algorithm.items():
        if str(key).endswith("cache_dir") and isinstance(value, str) and value.startswith(REMOTE_PREFIXES):
            problems.append(
                f"algorithm.{key}={value!r} is remote; only local folders work offline: download the files and give their folder"
            )
    return problems


def _resume_problems(cfg: DictConfig) -> list[str]:
    try:
        return resume_plan(cfg)[1]
    except Exception as error:  # e.g. an unreadable output folder
        return [f"cannot check the output folder for a run to resume: {error}"]


def _data_file_problems(benchmark: dict) -> list[str]:
    """Missing data files, named, whatever else is wrong with the benchmark config."""
    source, root = benchmark.get("source"), benchmark.get("root")
    if source not in SOURCE_NUM_CLASSES or (source != "digits" and root is None):
        return []  # reported by _benchmark_problems
    try:
        load_source(source, None if root is None else str(root), bool(benchmark.get("download", False)))
    except DataNotFoundError as error:
        return [f"benchmark: {error}"]
    return []


def _benchmark_build_problems(benchmark_cfg: DictConfig) -> list[str]:
    """Build the benchmark on its data: the checks only the benchmark class knows (angles, class order)."""
    try:
        instantiate(benchmark_cfg).load()
    except Exception as error:
        # Hydra wraps constructor errors; the user needs the constructor's own message.
        cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
        return [f"benchmark: {cause}"]
    return []
