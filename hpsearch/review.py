"""Panda --interactive: before each trial the proposal is shown and one key decides.

Enter runs it, `e` edits a value (a line `path=value`, checked against the search space; then
the edited proposal is shown again), `s` stops the search (the run's state becomes `stopped`).
The live view steps aside while asking, so the prompt is what the terminal shows. While the
trial trains, `k` ends it and `r` rescues it (see PandaReviewer).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import sys
import threading
from collections.abc import Callable
from typing import Any

import yaml
from rich.console import Console
from rich.text import Text

from hpsearch.errors import InputError
from hpsearch.progress import ProgressSink, SilentProgress, short_value
from hpsearch.space import Param, apply_params, in_range
from hpsearch.spec import Spec

ENTER = ("\r", "\n")
WHILE_TRAINING = Text(
    "  while it trains: k ends it (keeps its best weights) · r rescues it now", style="dim"
)
PROMPT = Text.assemble(
    "  ",
    ("Enter", "bold"),
    " run it · ",
    ("e", "bold"),
    " edit a value · ",
    ("s", "bold"),
    " stop: ",
)


def read_key() -> str:
    """One key press from the terminal, without waiting for Enter (cbreak mode: Ctrl-C still
    interrupts)."""
    import termios
    import tty

    fd = sys.stdin.fileno()
    before = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        return os.read(fd, 1).decode(errors="replace")
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, before)


class PandaReviewer:
    """The panda reviewer. `reviewer(number, proposal)` asks about one proposal and returns
    the values to train, or None to stop the search. While the trial then trains, keys still
    act: `k` ends it after the current epoch (keeping its best weights, as early stopping
    would), `r` rescues it now; `command()` hands the training loop what was pressed."""

    def __init__(
        self,
        params: list[Param],
        spec: Spec,
        progress: ProgressSink | None = None,
        console: Console | None = None,
        key: Callable[[], str] = read_key,
        listen: bool = True,
    ):
        self.console = console or Console(stderr=True)
        self.progress = progress or SilentProgress()
        self.by_path = {p.path: p for p in params}
        self.spec, self.key = spec, key
        self.listener = KeyListener() if listen else None

    def command(self) -> str | None:
        return self.listener.take() if self.listener is not None else None

    def __call__(self, number: int, values: dict[str, Any]) -> dict[str, Any] | None:
        if self.listener is not None:
            self.listener.stop()  # the prompt reads the keys now
        with self.progress.paused():
            edited = False
            while True:
                shown = ", ".join(f"{k}={short_value(v)}" for k, v in values.items()) or "(none)"
                label = "edited proposal (runs as a new trial)" if edited else "proposal"
                self.console.print(Text.assemble((f"trial {number}", "bold"), f" {label}: {shown}"))
                self.console.print(PROMPT, end="")
                pressed = self.key()
                if pressed in ENTER:
                    self.console.print("run")
                    if self.listener is not None:
                        self.console.print(WHILE_TRAINING)
                        self.listener.start()
                    return values
                if pressed.lower() == "s":
                    self.console.print("stop")
                    return None
                if pressed.lower() == "e":
                    self.console.print("edit")
                    change = _edit(self.console, self.by_path, values, self.spec)
                    if change is not None:
                        values, edited = change, True
                    continue
                self.console.print(f"{pressed!r} is not one of Enter, e, s", markup=False)


class KeyListener:
    """Reads single keys from the terminal in a background thread while a trial trains
    (cbreak mode, so Ctrl-C still interrupts); the terminal is put back as it was on `stop`
    and at exit."""

    COMMANDS = {"k": "end", "r": "rescue"}

    def __init__(self):
        self.pending: str | None = None
        self.thread: threading.Thread | None = None
        self.quit = threading.Event()
        self.saved: list[Any] | None = None
        atexit.register(self.stop)

    def start(self) -> None:
        import termios
        import tty

        fd = sys.stdin.fileno()
        self.saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self.quit.clear()
        self.pending = None
        self.thread = threading.Thread(target=self._read, args=(fd,), daemon=True)
        self.thread.start()

    def _read(self, fd: int) -> None:
        while not self.quit.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                pressed = os.read(fd, 1).decode(errors="replace").lower()
                self.pending = self.COMMANDS.get(pressed, self.pending)

    def take(self) -> str | None:
        pending, self.pending = self.pending, None
        return pending

    def stop(self) -> None:
        if self.thread is None:
            return
        import termios

        self.quit.set()
        self.thread.join()
        self.thread = None
        if self.saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self.saved)


def _edit(
    console: Console, by_path: dict[str, Param], values: dict[str, Any], spec: Spec
) -> dict[str, Any] | None:
    """One `path=value` line; the edited values, or None (with why) when it does not fit."""
    with contextlib.suppress(EOFError):
        text = console.input("  path=value (e.g. train.lr=0.003; Enter to go back): ").strip()
        if not text:
            return None
        path, _, raw = text.partition("=")
        path = path.strip()
        if path not in by_path:
            console.print(f"  not a search parameter; one of: {', '.join(by_path)}", markup=False)
            return None
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            console.print("  could not read that value")
            return None
        if not in_range(by_path[path], value):
            console.print(f"  {path}: {value!r} is outside the search space", markup=False)
            return None
        try:
            apply_params(spec, {**values, path: value})
        except InputError as exc:
            console.print(f"  {exc}", markup=False)
            return None
        return {**values, path: value}
    return None
