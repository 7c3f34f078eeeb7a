"""The one shape of a value error the CLI and config layers re-word: ``field`` is ``value``; ``allowed`` says what would do."""

from __future__ import annotations

from typing import Any


class FieldError(ValueError):
    """A value that is not allowed; ``field`` / ``value`` / ``allowed`` are kept so a caller can name its own flag."""

    what = ""  # what the field belongs to, in the message ("recipe field"); empty: the field's name alone

    def __init__(self, name: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = name, value, allowed
        label = f"{self.what} {name!r}" if self.what else name
        super().__init__(f"{label} is {value!r}; allowed: {allowed}")
