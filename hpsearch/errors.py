"""Errors that mean "the user's input is wrong": the CLI turns them into exit code 2."""

from __future__ import annotations


class InputError(Exception):
    """Bad spec, data or arguments. The message names the field or file and says what is allowed."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None):
        self.source = source
        self.line = line
        where = source or ""
        if source and line:
            where = f"{source}:{line}"
        super().__init__(f"{where}: {message}" if where else message)
