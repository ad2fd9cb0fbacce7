"""One way for every class to state its rules, read both by its constructor and by a pre-flight check.

An algorithm, benchmark, backbone or data source knows what it accepts (paradigms, the backbone
it needs, class counts, option values). It writes that once, in a ``config_problems``
classmethod that looks at plain options (the config's keys, before anything is built) and
returns every problem with its fix. The constructor raises them through ``raise_if_problems``;
``clrun``'s pre-flight check collects them from every class at once before anything is
touched. So a rule cannot be checked in one place and forgotten in the other.
"""

from __future__ import annotations

import math
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
