"""Live progress on stderr: a rich bar on a terminal, plain flushed lines otherwise (CI logs)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Protocol

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hpsearch.errors import InputError
from hpsearch.outcome import TrialOutcome, TrialState
from hpsearch.space import Param, apply_params, in_range
from hpsearch.spec import Spec
from hpsearch.summary import SearchStatus


class ProgressSink(Protocol):
    def trial_started(self, number: int, params: dict[str, Any], epochs: int) -> None: ...
    def epoch(self, number: int, record: dict[str, Any]) -> None: ...
    def trial_finished(self, outcome: TrialOutcome, status: SearchStatus | None = None) -> None: ...
    def close(self) -> None: ...


def _metric_text(record: dict[str, Any]) -> str:
    keys = ("train_loss", "dev_loss", "dev_error")
    return "  ".join(f"{k} {record[k]:.4g}" for k in keys if k in record)


def outcome_text(outcome: TrialOutcome) -> str:
    if outcome.state == TrialState.FAILED:
        return f"trial {outcome.number} failed: {outcome.reason}"
    metrics = outcome.metrics
    parts = [f"trial {outcome.number} {outcome.state}"]
    for key in ("train_error", "dev_error"):
        if key in metrics:
            parts.append(f"{key} {metrics[key]:.4f}")
    if "train_error" in metrics and "dev_error" in metrics:
        parts.append(f"variance {metrics['dev_error'] - metrics['train_error']:+.4f}")
    parts.append(f"best epoch {outcome.best_epoch}/{outcome.epochs_run}")
    if outcome.params:
        parts.append(", ".join(f"{k}={_short(v)}" for k, v in outcome.params.items()))
    return "  ".join(parts)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class PlainProgress:
    """One line every tenth of a trial's epochs, flushed at once so CI logs stay live."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.epochs = 1

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def trial_started(self, number: int, params: dict[str, Any], epochs: int) -> None:
        self.epochs = epochs
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        self._say(f"trial {number} started" + (f": {shown}" if shown else ""))

    def epoch(self, number: int, record: dict[str, Any]) -> None:
        step = max(1, self.epochs // 10)
        if record["epoch"] % step == 0 or record["epoch"] == 1:
            self._say(
                f"trial {number} epoch {record['epoch']}/{self.epochs}  {_metric_text(record)}"
            )

    def trial_finished(self, outcome: TrialOutcome, status: SearchStatus | None = None) -> None:
        self._say(outcome_text(outcome))
        if status is not None:
            self._say(status.text())

    def close(self) -> None:
        pass


class RichProgress:
    """A per-epoch bar for the current trial, with its latest losses."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.bar = Progress(
            TextColumn("[bold]trial {task.fields[trial]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epochs  {task.fields[metrics]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.bar.start()
        self.tasks: dict[int, Any] = {}  # one bar per running trial (a stack runs several)
        self.search_task = None

    def trial_started(self, number: int, params: dict[str, Any], epochs: int) -> None:
        self.tasks[number] = self.bar.add_task("", total=epochs, trial=number, metrics="")

    def epoch(self, number: int, record: dict[str, Any]) -> None:
        if number in self.tasks:
            self.bar.update(
                self.tasks[number], completed=record["epoch"], metrics=_metric_text(record)
            )

    def trial_finished(self, outcome: TrialOutcome, status: SearchStatus | None = None) -> None:
        self.console.print(outcome_text(outcome))
        if outcome.number in self.tasks:
            self.bar.remove_task(self.tasks.pop(outcome.number))
        if status is not None:
            if self.search_task is None:
                self.search_task = self.bar.add_task(
                    "", total=status.total, trial="search", metrics=""
                )
            self.bar.update(self.search_task, completed=status.done, metrics=status.text())

    def close(self) -> None:
        self.bar.stop()


class SilentProgress:
    def trial_started(self, number: int, params: dict[str, Any], epochs: int) -> None:
        pass

    def epoch(self, number: int, record: dict[str, Any]) -> None:
        pass

    def trial_finished(self, outcome: TrialOutcome, status: SearchStatus | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def make_progress(quiet: bool = False) -> ProgressSink:
    if quiet:
        return SilentProgress()
    return RichProgress() if sys.stderr.isatty() else PlainProgress()


Reviewer = Callable[[int, dict[str, Any]], "dict[str, Any] | None"]


def make_reviewer(params: list[Param], spec: Spec, console: Console | None = None) -> Reviewer:
    """Panda --interactive: before each trial, run the proposal, edit a value, or stop."""
    console = console or Console(stderr=True)
    by_path = {p.path: p for p in params}

    def review(number: int, values: dict[str, Any]) -> dict[str, Any] | None:
        shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items()) or "(no parameters)"
        console.print(f"[bold]trial {number}[/] proposal: {shown}")
        while True:
            answer = console.input("[Enter] run it · [e]dit a value · [s]top: ").strip().lower()
            if answer in ("", "y", "r"):
                return values
            if answer.startswith("s"):
                return None
            if answer.startswith("e"):
                edited = _edit(console, by_path, values, spec)
                if edited is not None:
                    return edited

    return review


def _edit(
    console: Console, by_path: dict[str, Param], values: dict[str, Any], spec: Spec
) -> dict[str, Any] | None:
    text = console.input("path=value (e.g. train.lr=0.003): ").strip()
    path, _, raw = text.partition("=")
    path = path.strip()
    if path not in by_path:
        console.print(f"not a search parameter; one of: {', '.join(by_path)}")
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        console.print("could not read that value")
        return None
    if not in_range(by_path[path], value):
        console.print(f"{path}: {value!r} is outside the search space")
        return None
    try:
        apply_params(spec, {**values, path: value})
    except InputError as exc:
        console.print(str(exc))
        return None
    return {**values, path: value}
