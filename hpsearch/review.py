"""Panda --interactive: before each trial the proposal is shown and one key decides.

Enter runs it, `e` edits a value (a line `path=value`, checked against the search space; then
the edited proposal is shown again), `s` stops the search (the run's state becomes `stopped`).
The live view steps aside while asking, so the prompt is what the terminal shows.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

import yaml
from rich.console import Console
from rich.text import Text

from hpsearch.errors import InputError
from hpsearch.progress import ProgressSink, Reviewer, SilentProgress
from hpsearch.space import Param, apply_params, in_range
from hpsearch.spec import Spec

ENTER = ("\r", "\n")
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


def make_reviewer(
    params: list[Param],
    spec: Spec,
    progress: ProgressSink | None = None,
    console: Console | None = None,
    key: Callable[[], str] = read_key,
) -> Reviewer:
    """The panda reviewer: `review(number, proposal)` returns the values to train, or None to
    stop the search."""
    console = console or Console(stderr=True)
    progress = progress or SilentProgress()
    by_path = {p.path: p for p in params}

    def review(number: int, values: dict[str, Any]) -> dict[str, Any] | None:
        with progress.paused():
            edited = False
            while True:
                shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items()) or "(none)"
                label = "edited proposal (runs as a new trial)" if edited else "proposal"
                console.print(Text.assemble((f"trial {number}", "bold"), f" {label}: {shown}"))
                console.print(PROMPT, end="")
                pressed = key()
                if pressed in ENTER:
                    console.print("run")
                    return values
                if pressed.lower() == "s":
                    console.print("stop")
                    return None
                if pressed.lower() == "e":
                    console.print("edit")
                    change = _edit(console, by_path, values, spec)
                    if change is not None:
                        values, edited = change, True
                    continue
                console.print(f"{pressed!r} is not one of Enter, e, s", markup=False)

    return review


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


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
