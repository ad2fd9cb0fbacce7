"""One way for every class to state its rules, read both by its constructor and by a pre-flight check.

An algorithm, benchmark, backbone or data source knows what it accepts (paradigms, the backbone
it needs, class counts, option values). It writes that once, in a ``config_problems``
classmethod that looks at plain options (the config's keys, before anything is built) and
returns every problem with its fix. The constructor raises them through ``raise_if_problems``;
``clrun``'s pre-flight check collects them from every class at once before anything is
touched. So a rule cannot be checked in one place and forgotten in the other.

Types are not written here: the constructor's annotations state them, and ``clcore.config_types``
checks the config against them before these rules run (a rule then sees only well-typed values).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """The run cannot work as configured. ``problems`` lists each issue with what to change."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        listed = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(
            f"{len(self.problems)} problem(s) with the configuration; nothing was trained:\n{listed}"
        )


def raise_if_problems(problems: list[str]) -> None:
    """Raise one ``ConfigError`` listing ``problems``; return quietly when there are none."""
    if problems:
        raise ConfigError(problems)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_positive_finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value) and value > 0


def shown(value: Any) -> str:
    """A config value as the user writes it on the command line (``true``, ``null``, ``'hat'``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value)


def choice_problem(name: str, value: Any, choices: Iterable[Any]) -> str:
    """``name=value`` is not one of ``choices``: the problem, with the closest choice when there is one.

    One wording for every choice option, whether a ``Literal`` annotation refuses it
    (``clcore.config_types``) or a class's ``config_problems`` does, so both say the same.
    """
    choices = list(choices)
    close = (
        difflib.get_close_matches(value, [c for c in choices if isinstance(c, str)], n=1)
        if isinstance(value, str)
        else []
    )
    hint = f" (did you mean {name}={close[0]}?)" if close else ""
    return f"{name}={value!r}: must be one of {', '.join(shown(c) for c in choices)}{hint}"
