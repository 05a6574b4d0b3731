"""A real pseudo-terminal for tests: a command runs in it (pexpect) and what it draws is read
back as the screen a user would see (pyte, a VT100 emulator), live redraws included."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pexpect
import pyte


class Terminal:
    def __init__(self, argv: list[str], cwd: Path, rows: int = 40, cols: int = 120):
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows)}
        env.pop("NO_COLOR", None)
        self.child = pexpect.spawn(
            argv[0], argv[1:], cwd=str(cwd), env=env, dimensions=(rows, cols), timeout=1
        )
        self.transcript = b""  # everything the program wrote, for messages

    def pump(self, seconds: float = 0.1) -> None:
        """Read what the program wrote in the next `seconds` onto the screen."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                chunk = self.child.read_nonblocking(65536, timeout=0.05)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                return
            self.transcript += chunk
            self.stream.feed(chunk)

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, seen: str | Callable[[str], bool], timeout: float) -> float:
        """Seconds until the screen shows `seen`; AssertionError with the screen if it never
        does within `timeout`."""
        check = seen if callable(seen) else (lambda text: seen in text)
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            self.pump(0.1)
            if check(self.text()):
                return time.monotonic() - started
            if not self.child.isalive():
                self.pump(0.2)
                if check(self.text()):
                    return time.monotonic() - started
                break
        raise AssertionError(f"never saw {seen!r}; the screen:\n{self.text()}")

    def send(self, keys: str) -> None:
        self.child.send(keys)

    def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.child.isalive() and time.monotonic() < deadline:
            self.pump(0.2)
        self.pump(0.2)
        if self.child.isalive():
            self.child.terminate(force=True)
            raise AssertionError(f"still running after {timeout} s; the screen:\n{self.text()}")
        self.child.close()
        return self.child.exitstatus if self.child.exitstatus is not None else -1

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)
