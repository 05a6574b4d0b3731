"""Errors the CLI turns into exit codes: the user's input is wrong (2); the disk is full (1)."""

from __future__ import annotations

import os
import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` safe for a terminal: control characters (an escape sequence hidden in a data
    value or a file name) are shown as \\xNN instead of acting on the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class InputError(Exception):
    """Bad spec, data or arguments. The message names the field or file and says what is allowed."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None):
        self.source = source
        self.line = line
        where = source or ""
        if source and line:
            where = f"{source}:{line}"
        super().__init__(f"{where}: {message}" if where else message)


class DiskFull(Exception):
    """No space left where the run writes: the run stops (resumable once space is freed)."""

    def __init__(self, path: str):
        self.path = path
        self.run: object | None = None  # the run folder it stopped, once known
        super().__init__(f"disk full at {path}")


NO_SPACE = (28, 122)  # ENOSPC, EDQUOT: out of space, out of quota


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def says_disk_full(reason: str | None) -> bool:
    """Whether a recorded failure reason ('disk: No space left on device (…)') is a full disk."""
    return reason is not None and any(os.strerror(code) in reason for code in NO_SPACE)
