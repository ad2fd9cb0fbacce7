"""Every config option's type, checked before anything runs, from the one place that states it.

A class's options are its constructor's parameters, and their types are the constructor's
annotations. ``option_type_problems`` checks a config group's plain values (``algorithm.*``,
``backbone.*``, ...) against them, so a type is written once, next to the code that uses it:
``save_checkpoints=flase`` or ``algorithm.s_max=abc`` is refused, with the key and the fix,
before a model is built. Ranges (``s_max >= 1``, widths >= 1) stay in each class's
``config_problems`` (``clcore.config_rules``); ``problems_with_types_first`` runs those rules only
on the well-typed values, so a rule never compares a string with a number and a key with a wrong
type is reported once. The top-level keys that belong to no class have their own schema here,
``RunOptions``, checked by ``run_option_problems``.

Why not OmegaConf's structured configs (``OmegaConf.structured`` of a dataclass made from the
signature)? They would take the types from the same signature, but they convert instead of
refusing: the strings ``"yes"`` and ``"3"`` and the number ``1`` become ``True``, ``3`` and
``True`` where the annotation is ``bool`` or ``int``; they reject ``Literal`` annotations outright
(enums only) and unions of anything but primitives; and a merge stops at the first bad key, with
a message that names OmegaConf's internals rather than the fix. The check below is strict
(``bool`` takes only ``true``/``false``; ``int`` no float), reports every key at once and leaves
what it cannot judge (modules, callables, ``Any``) alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
import types
import typing
from collections.abc import Callable, Mapping, MutableMapping, MutableSequence, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Literal, Union, get_args, get_origin

from clcore.config_rules import choice_problem, is_int, is_number, shown

__all__ = [
    "RunOptions",
    "accepted_options",
    "option_annotations",
    "option_type_problems",
    "problems_with_types_first",
    "run_option_problems",
    "value_type_problem",
]

_SEQUENCES = (list, tuple, Sequence, MutableSequence)
_MAPPINGS = (dict, Mapping, MutableMapping)
_PATHS = (PurePath, os.PathLike)


# ---- a constructor's options and their annotations ---------------------------------------------
def _parameters(init: Callable) -> list[inspect.Parameter]:
    return list(inspect.signature(init).parameters.values())[1:]  # without self


def _constructors(cls: type) -> tuple[list[Callable], bool]:
    """The ``__init__``s whose keyword parameters ``cls(...)`` takes, following ``**kwargs`` up the
    MRO; and True when a ``**kwargs`` reaches the end of the MRO (then any keyword is taken)."""
    chain = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        chain.append(init)
        if not any(p.kind is p.VAR_KEYWORD for p in _parameters(init)):
            return chain, False
    return chain, True


def accepted_options(cls: type) -> set[str] | None:
    """The keyword arguments ``cls(...)`` takes, following ``**kwargs`` up the MRO; None: any."""
    chain, takes_any = _constructors(cls)
    if takes_any:
        return None
    return {
        p.name
        for init in chain
        for p in _parameters(init)
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def _type_hints(init: Callable) -> dict[str, Any]:
    """``init``'s resolved annotations; one that cannot be resolved (a name imported only for type
    checkers) is left out instead of hiding the others."""
    try:
        return typing.get_type_hints(init)
    except Exception:
        hints = {}
        for name, annotation in getattr(init, "__annotations__", {}).items():
            try:
                hints[name] = (
                    eval(annotation, init.__globals__) if isinstance(annotation, str) else annotation
                )
            except Exception:
                continue
        return hints


def option_annotations(cls: type) -> dict[str, Any]:
    """Each constructor option's annotation (the subclass's where several classes annotate it).

    Empty for a target that is not a class (a factory function): what it takes is its own business.
    """
    annotations: dict[str, Any] = {}
    if not isinstance(cls, type):
        return annotations
    for init in _constructors(cls)[0]:
        hints = _type_hints(init)
        for parameter in _parameters(init):
            keyword = parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
            if keyword and parameter.name in hints:
                annotations.setdefault(parameter.name, hints[parameter.name])
    return annotations


# ---- one value against one annotation -----------------------------------------------------------
def _fits(value: Any, hint: Any) -> bool:
    """Whether plain config data ``value`` fits ``hint``; True for what is not checked (modules, callables, Any)."""
    if isinstance(value, dict) and "_target_" in value:
        return True  # Hydra builds an object from it; its type is not known here
    origin, args = get_origin(hint), get_args(hint)
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_int(value)
    if hint is float:
        return is_number(value)
    if hint is str:
        return isinstance(value, str)
    if hint in _PATHS or (isinstance(hint, type) and issubclass(hint, PurePath)):
        return isinstance(value, str | PurePath)
    if origin is Literal:
        return any(value == choice and type(value) is type(choice) for choice in args)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint in _SEQUENCES or origin in _SEQUENCES:
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_fits, value, args))
        return not args or all(_fits(item, args[0]) for item in value)
    if hint in _MAPPINGS or origin in _MAPPINGS:
        return isinstance(value, dict) and (len(args) < 2 or all(_fits(v, args[1]) for v in value.values()))
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict)  # its fields are checked one by one (run_option_problems)
    return True


def _described(hint: Any) -> str:
    """What a value of type ``hint`` is, in the config's words."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is type(None) or hint is None:
        return "null"
    named = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in named:
        return named[hint]
    if origin is Literal:
        return "one of " + ", ".join(shown(choice) for choice in args)
    if origin in (Union, types.UnionType):
        return ", or ".join(_described(arg) for arg in args)
    if hint in _SEQUENCES or origin in _SEQUENCES:
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} items ({'; '.join(_described(arg) for arg in args)})"
        return f"a list (each item {_described(args[0])})" if args else "a list"
    if hint in _MAPPINGS or origin in _MAPPINGS:
        return (
            f"a mapping (each value {_described(args[1])})"
            if len(args) == 2 and args[1] is not Any
            else "a mapping"
        )
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    if hint in _PATHS or (isinstance(hint, type) and issubclass(hint, PurePath)):
        return "a path (a string)"
    return f"a {getattr(hint, '__name__', str(hint))}"  # not judged by _fits, named for a union's message


def _hint_for(name: str, value: Any, hint: Any) -> str:
    """The likely fix, where the value itself suggests one."""
    accepted = [hint, *get_args(hint)] if get_origin(hint) in (Union, types.UnionType) else [hint]
    if isinstance(value, str):
        if bool in accepted:
            close = difflib.get_close_matches(value.lower(), ["true", "false"], n=1, cutoff=0.5)
            if close:
                return f" (did you mean {close[0]}, unquoted?)"
        if (int in accepted or float in accepted) and _parses_as_number(value):
            return " (write the number without quotes)"
        choices = [c for m in accepted if get_origin(m) is Literal for c in get_args(m) if isinstance(c, str)]
        close = difflib.get_close_matches(value, choices, n=1)
        if close:
            return f" (did you mean {name}={close[0]}?)"
    if is_number(value) and int in accepted and float not in accepted and float(value).is_integer():
        return f" (write {int(value)}, without a decimal point)"
    if isinstance(value, list | tuple):
        for member in accepted:  # a list of one item type: name the first item that does not fit
            args = get_args(member)
            if get_origin(member) in _SEQUENCES and len(args) in (1, 2) and args[-1] in (args[0], Ellipsis):
                for index, item in enumerate(value):
                    if not _fits(item, args[0]):
                        return f" (item {index} is {shown(item)})"
    return ""


def _parses_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def value_type_problem(name: str, value: Any, hint: Any) -> str | None:
    """``name=value``'s problem when ``value`` does not fit ``hint``, with its fix; None when it fits."""
    if _fits(value, hint):
        return None
    if get_origin(hint) is Literal:
        return choice_problem(name, value, get_args(hint))  # the words config_problems use too
    return f"{name}={value!r}: must be {_described(hint)}{_hint_for(name, value, hint)}"


# ---- a config group's options -------------------------------------------------------------------
def _type_problems_by_key(group: str, cls: type, options: Mapping[str, Any]) -> dict[str, str]:
    annotations = option_annotations(cls)
    problems = {}
    for key, value in options.items():
        if key in annotations:
            problem = value_type_problem(f"{group}.{key}", value, annotations[key])
            if problem is not None:
                problems[key] = problem
    return problems


def option_type_problems(group: str, cls: type, options: Mapping[str, Any]) -> list[str]:
    """Every option of ``options`` (the config's ``<group>.*`` keys) whose value does not fit the
    annotation of ``cls``'s constructor parameter of that name, each with its fix.

    Options without an annotation, unknown options (``clcore.clrun.checks`` names those) and
    annotations that plain data cannot be judged against (modules, callables, ``Any``) pass.
    """
    return list(_type_problems_by_key(group, cls, options).values())


def problems_with_types_first(
    group: str, cls: type, options: Mapping[str, Any], rules: Callable[[dict[str, Any]], list[str]]
) -> list[str]:
    """``options``' type problems, then ``rules`` (a class's ``config_problems``) on the well-typed ones.

    A rule never sees a value of the wrong type (it could not compare ``"abc"`` with 0): an option
    with a type problem is left out, as if absent, and a rule problem that names it anyway (an
    option the rules require) is dropped, so each wrong option is reported once, for its type.
    """
    wrong = _type_problems_by_key(group, cls, options)
    kept = {key: value for key, value in options.items() if key not in wrong}
    named = tuple(f"{group}.{key}=" for key in wrong)
    return list(wrong.values()) + [problem for problem in rules(kept) if not any(n in problem for n in named)]


# ---- the top-level keys that belong to no class -------------------------------------------------
@dataclass
class EvalOptions:
    """``eval.*``: extra evaluations of the run."""

    zero_shot: bool = False  # test each task before it trains and on the untrained model (FWT)


@dataclass
class PathOptions:
    """``paths.*``: where the run writes."""

    output_dir: str = ""  # the run's folder (Hydra's runtime output dir, resolved)


@dataclass
class RunOptions:
    """The top-level keys of ``configs/config.yaml`` that no class takes (``docs/configuration.md``).

    A field without a default must be set. ``resume`` is judged by ``clcore.clrun.resume.resume_plan``
    (which also reads the output folder), so it is not checked twice here.
    """

    seed: int  # in [0, 2**32): outside it Lightning silently draws a random seed
    name: str | int = "default"  # the output folder outputs/<name>/...; name=2024 arrives as a number
    plots: bool = False
    save_checkpoints: bool = True
    resume: Literal["auto"] | bool = field(default="auto", metadata={"checked_by": "clcore.clrun.resume"})
    eval: EvalOptions = field(default_factory=EvalOptions)
    paths: PathOptions = field(default_factory=PathOptions)


# The config groups of config.yaml's defaults list: top-level keys too, each checked by its class.
CONFIG_GROUPS = (
    "benchmark",
    "backbone",
    "paradigm",
    "algorithm",
    "optimizer",
    "lr_scheduler",
    "trainer",
    "callbacks",
    "logger",
    "hydra",
)


def _section_problems(schema: type, node: Mapping[str, Any], prefix: str) -> list[str]:
    """Each present key of ``node`` against ``schema``'s field; a missing required field; a near miss."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    problems = []
    for name, spec in fields.items():
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        if name not in node:
            if required:
                problems.append(f"{prefix}{name} is not set: it must be {_described(hints[name])}")
            continue
        if "checked_by" in spec.metadata:
            continue
        problem = value_type_problem(f"{prefix}{name}", node[name], hints[name])
        if problem is not None:
            problems.append(problem)
        elif dataclasses.is_dataclass(hints[name]):
            problems += _section_problems(hints[name], node[name], f"{prefix}{name}.")
    known = list(fields) + (list(CONFIG_GROUPS) if schema is RunOptions else [])
    for key in node:
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.8) if key not in known else []
        if close:
            problems.append(
                f"{prefix}{key} is not a key of the config: did you mean {prefix}{close[0]}? "
                "(a key of your own needs a name unlike the known ones)"
            )
    return problems


def run_option_problems(plain: Mapping[str, Any]) -> list[str]:
    """The top-level keys' problems (``RunOptions``): types, the seed's range, misspelt known keys.

    ``plain`` is the whole resolved config. Keys of one's own (``+foo=1``) are allowed, unless
    their name is a near miss of a known key (``save_checkpoint``, ``plot``).
    """
    problems = _section_problems(RunOptions, plain, "")
    seed = plain.get("seed")
    if is_int(seed) and not 0 <= seed < 2**32:
        problems.append(
            f"seed={seed!r}: must be an integer in [0, 2**32) (outside it Lightning silently draws a random seed)"
        )
    return problems
