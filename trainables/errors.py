"""The one error type for bad user input (recipes, spaces, data, checkpoints).

Anything raising ``ConfigError`` is a user mistake: the CLI prints its one-line message and
exits with code 2, without a traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input: the message names the place (knob, file), the rule and the value."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)

    def at(self, where: str) -> ConfigError:
        """The same error, prefixed with the file or object it came from."""
        return ConfigError(str(self), where=where)
