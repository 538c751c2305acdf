"""The one error type for bad user input (recipes, spaces, data, checkpoints).

Anything raising ``ConfigError`` is a user mistake: the CLI prints its one-line message and
exits with code 2, without a traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """Bad user input: the message names the place (knob, file), the rule and the value."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)

    def at(self, where: str) -> ConfigError:
        """The same error, prefixed with the file or object it came from."""
        return ConfigError(str(self), where=where)


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type's
    name when it has none: what a one-line error quotes of a cause."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


def last_line(error: BaseException, limit: int = 300) -> str:
    """The last non-empty line of an error's text (a Ray task or trial error is a traceback that
    ends with the cause's message), or its type's name when it has none."""
    lines = [ln for ln in str(error).splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else type(error).__name__


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``candidates``, or an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
