"""Building every object of a run, before the output folder is touched.

The pre-flight check (``clcore.clrun.checks``) judges the config's plain values. Some problems
only a constructor sees (an option that depends on another, a factory target, Lightning's
``Trainer(...)`` finding no GPU, an optimiser refusing its ``betas``). ``build_run`` therefore
constructs everything the task loop needs, once, collecting every constructor's refusal into one
``ConfigError``, so a run that cannot start stops here: nothing written, nothing deleted. The
task loop uses these very objects; nothing is built twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning import Trainer
from omegaconf import DictConfig, OmegaConf, open_dict

from clcore.algorithms.base import CLAlgorithm
from clcore.benchmarks.base import CLBenchmark
from clcore.clrun.instantiate import instantiate_group, instantiate_with_defaults
from clcore.config_rules import ConfigError, raise_if_problems
from clcore.lightning_speed import default_profiler


@dataclass
class RunObjects:
    """What the task loop runs: the model, its callbacks and loggers, and how to make a Trainer.

    ``first_trainer``: the Trainer built here to prove the trainer config works; the loop uses it
    for its first task and ``new_trainer()`` for every later one (one Trainer per task).
    """

    algorithm: CLAlgorithm
    callbacks: list
    loggers: list
    new_trainer: Callable[[], Trainer]
    first_trainer: Trainer


def use_backbone_the_algorithm_needs(cfg: DictConfig) -> str | None:
    """Give an algorithm that needs a kind of backbone (``CLAlgorithm.required_backbone_type``: HAT's
    mask backbones) the matching version of the configured one (``CLBackbone.variant_for``: the mask
    version of ``backbone=mlp``, same sizes), so that ``clrun algorithm=hat`` runs as it is typed.

    Rewrites ``cfg.backbone`` in place, before the pre-flight check reads it, and returns a line
    saying what it did; None when nothing changes (the backbone fits already, it has no such
    version, or a target cannot be imported: then the pre-flight check's message says what to do).
    """
    from hydra._internal.utils import _locate

    from clcore.backbones.base import CLBackbone

    try:
        algorithm, backbone = _locate(cfg.algorithm._target_), _locate(cfg.backbone._target_)
    except Exception:
        return None
    required = getattr(algorithm, "required_backbone_type", None)
    if not (isinstance(required, type) and isinstance(backbone, type) and issubclass(backbone, CLBackbone)):
        return None
    if issubclass(backbone, required):
        return None
    options = OmegaConf.to_container(cfg.backbone, resolve=False)
    found = backbone.variant_for(required, {k: v for k, v in options.items() if not k.startswith("_")})
    if found is None:
        return None
    variant, variant_options = found
    with open_dict(cfg):
        cfg.backbone = {"_target_": f"{variant.__module__}.{variant.__name__}", **variant_options}
    return (
        f"algorithm {algorithm.__name__} needs a {required.__name__}: the {backbone.__name__} backbone runs as "
        f"{variant.__name__}, the same network with {algorithm.__name__}'s masks"
    )


def build(cfg: DictConfig, benchmark: CLBenchmark | None = None) -> tuple[CLBenchmark, CLAlgorithm]:
    """Benchmark and algorithm from the config (for notebooks, studies and tests).

    ``benchmark``: a loaded one, used as it is; without it the benchmark is built and loaded
    here first, so a missing file fails fast. An algorithm that needs a kind of backbone gets
    the matching version of the configured one (``use_backbone_the_algorithm_needs``).
    """
    use_backbone_the_algorithm_needs(cfg)
    if benchmark is None:
        benchmark = instantiate(cfg.benchmark)
        benchmark.load()
    return benchmark, build_model(cfg, benchmark)


def build_model(cfg: DictConfig, benchmark: CLBenchmark) -> CLAlgorithm:
    """Backbone, heads and algorithm; the model's input size and task count follow the benchmark."""
    channels, height, width = benchmark.image_shape
    backbone = instantiate_with_defaults(
        cfg.backbone, input_dim=channels * height * width, in_channels=channels, num_tasks=benchmark.num_tasks
    )
    heads = instantiate(cfg.paradigm, input_dim=backbone.output_dim)
    return instantiate(
        cfg.algorithm,
        backbone=backbone,
        heads=heads,
        optimizer=instantiate(cfg.optimizer),
        lr_scheduler=instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None,
        num_tasks=benchmark.num_tasks,
    )


def build_run(
    cfg: DictConfig, benchmark: CLBenchmark, output_dir: str, extra_callbacks: list | None = None
) -> RunObjects:
    """Every object of the run, or one ``ConfigError`` naming every constructor that refused.

    Draws from the global random generators exactly as the task loop always did (the model's
    initialisation, nothing else): call it right after seeding.
    """
    problems: list[str] = []
    algorithm = _built("model", problems, lambda: build_model(cfg, benchmark))
    callbacks = _built("callbacks", problems, lambda: instantiate_group(cfg.get("callbacks")))
    loggers = _built("logger", problems, lambda: instantiate_group(cfg.get("logger")))
    new_trainer = first_trainer = None
    if callbacks is not None and loggers is not None:
        callbacks = callbacks + list(extra_callbacks or [])
        new_trainer = _built(
            "trainer", problems, lambda: _trainer_factory(cfg, benchmark, callbacks, loggers, output_dir)
        )
    if new_trainer is not None:
        first_trainer = _built("trainer", problems, new_trainer)
    raise_if_problems(problems)
    return RunObjects(algorithm, callbacks, loggers, new_trainer, first_trainer)


def _trainer_factory(cfg, benchmark, callbacks, loggers, output_dir) -> Callable[[], Trainer]:
    """The config resolved into a Trainer factory once; each task then only constructs a Trainer."""
    return instantiate(
        cfg.trainer,
        _partial_=True,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(output_dir),
        # Lightning's default pass-through profiler still costs a context manager per hook call
        **(default_profiler() if cfg.trainer.get("profiler") is None else {}),
        # without a validation split there is nothing to validate (and no empty-loader warning)
        **({"limit_val_batches": 0} if benchmark.val_fraction == 0 else {}),
    )


def optimizer_problems(cfg: DictConfig, skip: frozenset[str] = frozenset()) -> list[str]:
    """What constructing the optimiser and the scheduler refuses, found before the data is read and
    without the model: they are tried on one stand-in parameter, so their own checks (``betas``,
    ``eps``, a scheduler's ``factor``) run now without drawing random numbers, instead of when the
    first task starts training. ``skip``: ``optimizer`` / ``lr_scheduler`` when their options are
    already known to be wrong (one message per fault)."""
    problems: list[str] = []
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = None
    if "optimizer" not in skip:
        optimizer = _built(
            _described("optimizer", cfg.optimizer),
            problems,
            lambda: instantiate(cfg.optimizer)(params=[parameter]),
        )
    if cfg.get("lr_scheduler") and "lr_scheduler" not in skip:
        # on a stand-in optimiser when the configured one failed: its problems are reported too
        stand_in = optimizer if optimizer is not None else torch.optim.SGD([parameter], lr=0.1)
        _built(
            _described("lr_scheduler", cfg.lr_scheduler),
            problems,
            lambda: instantiate(cfg.lr_scheduler)(optimizer=stand_in),
        )
    return problems


def bare_trainer_problems(cfg: DictConfig) -> list[str]:
    """What ``Trainer(...)`` refuses (``accelerator=gpu`` without one, a bad ``precision``), built
    without callbacks or loggers. The pre-flight check tries it only beside other problems, to list
    them all at once; alone, ``build_run`` meets the same refusal building the run's own Trainer."""
    bare = {
        "logger": False,
        "callbacks": [],
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    problems: list[str] = []
    _built("trainer", problems, lambda: instantiate(cfg.trainer, **bare))
    return problems


def _described(group: str, node: DictConfig) -> str:
    """``optimizer (Adam: lr=0.001, betas=[0.9])``: the refusal names what was tried."""
    options = {
        k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if not str(k).startswith("_")
    }
    target = str(node.get("_target_", "?")).rsplit(".", 1)[-1]
    return f"{group} ({target}: {', '.join(f'{k}={v!r}' for k, v in options.items())})"


def _built(what: str, problems: list[str], make: Callable[[], Any]) -> Any:
    """``make()``, or None with its refusal appended to ``problems``."""
    try:
        return make()
    except Exception as error:
        problems.extend(_problems_of(what, error))
        return None


def _problems_of(what: str, error: BaseException) -> list[str]:
    """A refusal as the user needs it: the constructor's own problems or message, without
    Hydra's wrapping ("Error in call to target ...")."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, ConfigError):
        return error.problems
    # every line of it: a refusal's later lines say what to do (which file to fetch, where to put it)
    message = "\n    ".join(str(error).strip().splitlines()) or type(error).__name__
    return [f"{what}: {message} ({type(error).__name__})"]
