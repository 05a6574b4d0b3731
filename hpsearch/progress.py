"""Live progress on stderr: a live view on a terminal, plain flushed lines otherwise (CI logs).

The live view has one row per running trial (its epochs and current dev metric) and the
search's budget bar, counts by state, best so far and ETA, from the first second. Caviar's
workers train in other processes: they send their per-epoch records here through a queue
(`QueueProgress` there, `forward_events` here), so the view follows them as they train.
"""

from __future__ import annotations

import contextlib
import queue as queues
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from hpsearch.outcome import TrialOutcome, TrialState
from hpsearch.spec import COST_METRICS
from hpsearch.summary import SearchStatus, clock

MAX_ROWS = 12  # running trials shown in the live view; the rest are counted on one line


class ProgressSink(Protocol):
    # whether this sink wants the per-epoch records of trials trained in worker processes
    follows_workers: bool

    def search_started(self, status: SearchStatus) -> None: ...
    def trial_started(self, number: int, params: dict[str, Any], epochs: int) -> None: ...
    def epoch(self, number: int, record: dict[str, Any]) -> None: ...
    def trial_finished(self, outcome: TrialOutcome, status: SearchStatus | None = None) -> None: ...
    def paused(self) -> contextlib.AbstractContextManager[None]: ...
    def close(self) -> None: ...


# --- words ------------------------------------------------------------------------------------


def _metric_text(record: dict[str, Any]) -> str:
    keys = ("train_loss", "dev_loss", "dev_error")
    return "  ".join(f"{k} {record[k]:.4g}" for k in keys if k in record)


def rescue_text(number: int, event: dict[str, Any]) -> str:
    return (
        f"trial {number} rescued at epoch {event['epoch']} ({event['reason']}): back to its "
        f"best weights, lr now {short_value(event['lr'])}"
    )


def event_text(number: int, event: dict[str, Any]) -> str:
    if event["event"] == "rescue":
        return rescue_text(number, event)
    return f"trial {number} ended at epoch {event['epoch']} ({event['reason']})"


def outcome_text(outcome: TrialOutcome) -> str:
    if outcome.state == TrialState.FAILED:
        return f"trial {outcome.number} failed: {outcome.reason}"
    metrics = outcome.metrics
    parts = [f"trial {outcome.number} {outcome.state}"]
    for key in ("train_error", "dev_error"):
        if key in metrics:
            parts.append(f"{key} {metrics[key]:.4f}")
    if "train_error" in metrics and "dev_error" in metrics:
        # rounded first: a gap of -0.00001 reads +0.0000, not -0.0000
        variance = round(metrics["dev_error"] - metrics["train_error"], 4) + 0.0
        parts.append(f"variance {variance:+.4f}")
    parts.append(f"best epoch {outcome.best_epoch}/{outcome.epochs_run}")
    for key in COST_METRICS:  # measured when the objective names one
        if key in metrics:
            parts.append(f"{key} {metrics[key]:.4g}")
    if outcome.params:
        parts.append(", ".join(_param_text(k, v, outcome) for k, v in outcome.params.items()))
    for event in outcome.rescues:
        parts.append(f"rescued at epoch {event['epoch']} ({event['reason']})")
    return "  ".join(parts)


def _param_text(path: str, value: Any, outcome: TrialOutcome) -> str:
    """`train.lr=0.3→0.003` when rescues cut the learning rate the trial trained with."""
    text = f"{path}={short_value(value)}"
    if path == "train.lr" and outcome.rescues:
        text += f"→{short_value(outcome.rescues[-1]['lr'])}"
    return text


def short_value(value: Any) -> str:
    """A value as the live lines show it: floats to four significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={short_value(v)}" for k, v in params.items())


# --- plain lines (CI logs, pipes) -------------------------------------------------------------


class PlainProgress:
    """One line every tenth of a trial's epochs, flushed at once so CI logs stay live."""

    follows_workers = False  # caviar in a log: one line per finished trial is enough

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.epochs: dict[int, int] = {}

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def search_started(self, status: SearchStatus) -> None:
        pass

    def trial_started(self, number: int, params: dict[str, Any], epochs: int) -> None:
        self.epochs[number] = epochs
        shown = _params_text(params)
        self._say(f"trial {number} started" + (f": {shown}" if shown else ""))

    def epoch(self, number: int, record: dict[str, Any]) -> None:
        if "event" in record:
            self._say(event_text(number, record))
            return
        epochs = self.epochs.get(number, 1)
        step = max(1, epochs // 10)
        if record["epoch"] % step == 0 or record["epoch"] == 1:
            self._say(f"trial {number} epoch {record['epoch']}/{epochs}  {_metric_text(record)}")

    def trial_finished(self, outcome: TrialOutcome, status: SearchStatus | None = None) -> None:
        self.epochs.pop(outcome.number, None)
        self._say(outcome_text(outcome))
        if status is not None:
            self._say(status.text())

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        yield

    def close(self) -> None:
        pass


# --- the live view (a terminal) ---------------------------------------------------------------


@dataclass
class _Running:
    params: dict[str, Any]
    epochs: int
    epoch: int = 0
    metric: float | None = None
    rescued: bool = False


class LiveView:
    """A live table on a terminal: a row per running trial, the budget bar beneath."""

    follows_workers = True

    def __init__(self, console: Console | None = None, metric: str = "dev_error"):
        self.console = console or Console(stderr=True)
        self.metric = metric
        self.running: dict[int, _Running] = {}
        self.status: SearchStatus | None = None
        self.started = time.monotonic()
        # transient: the view is redrawn in place and gone at the end; finished trials are
        # printed above it and stay
        self.live = Live(
            console=self.console,
            get_renderable=self.render,
            refresh_per_second=4,
            transient=True,
            redirect_stderr=False,
            redirect_stdout=False,
        )
        self.live.start()

    def search_started(self, status: SearchStatus) -> None:
        self.status, self.metric = status, status.metric
        self.started = time.monotonic() - status.elapsed

    def trial_started(self, number: int, params: dict[str, Any], epochs: int) -> None:
        self.running[number] = _Running(params, epochs)

    def epoch(self, number: int, record: dict[str, Any]) -> None:
        row = self.running.get(number)
        if row is None:
            return
        if "event" in record:
            if record["event"] == "rescue":
                row.rescued = True
                row.params = {**row.params, "train.lr": record["lr"]}
            self.console.print(Text(event_text(number, record), style="yellow"))
            return
        row.epoch = record["epoch"]
        value = record.get(self.metric, record.get("dev_loss"))
        row.metric = value if isinstance(value, int | float) else row.metric

    def trial_finished(self, outcome: TrialOutcome, status: SearchStatus | None = None) -> None:
        self.running.pop(outcome.number, None)
        self.console.print(Text(outcome_text(outcome)))
        if status is not None:
            self.status = status

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The view steps aside while the user is asked something, then comes back."""
        self.live.stop()
        try:
            yield
        finally:
            self.live.start()

    def close(self) -> None:
        self.live.stop()

    # rendering

    def render(self) -> Group:
        running = dict(self.running)  # drawn from rich's refresh thread: a copy, not the dict
        numbers = sorted(running)
        lines = [self._trial_line(n, running[n]) for n in numbers[:MAX_ROWS]]
        if len(numbers) > MAX_ROWS:
            lines.append(Text(f"… {len(numbers) - MAX_ROWS} more running", style="dim"))
        if self.status is not None:
            lines.append(self._search_line(self.status, running))
        for line in lines:  # one terminal line each: cut at the edge, never wrapped
            line.no_wrap, line.overflow = True, "ellipsis"
        return Group(*lines)

    def _trial_line(self, number: int, row: _Running) -> Text:
        shown = "—" if row.metric is None else f"{row.metric:.4g}"
        return Text.assemble(
            (f"trial {number:<5}", "bold"),
            _bar(row.epoch, row.epochs),
            f" epoch {row.epoch:>3}/{row.epochs:<4} {self.metric} {shown:<8}",
            ("  rescued" if row.rescued else "", "yellow"),
            ("  " + _params_text(row.params), "dim"),
        )

    def _search_line(self, status: SearchStatus, running: dict[int, _Running]) -> Text:
        total = status.total or 0
        # the running trials' epochs count too, so the bar and ETA move between trials
        partial = sum(r.epoch / max(1, r.epochs) for r in running.values())
        done = min(status.done + partial, total) if total else status.done + partial
        elapsed = time.monotonic() - self.started
        counts = ", ".join(f"{n} {s}" for s, n in status.counts.items() if n) or "none finished"
        words = [f" {status.done}/{total or '?'} trials", counts]
        if status.best_value is not None:
            words.append(f"{status.best_word} {status.best_value:.4g} (trial {status.best_trial})")
        if status.front is not None:
            words.append(f"front {status.front}")
        words.append(f"elapsed {clock(elapsed)}")
        eta = _eta(elapsed, done - status.done_before, total - done) if total else None
        if eta is not None:
            words.append(f"eta {clock(eta)}")
        return Text.assemble(("search     ", "bold"), _bar(done, total), "  ".join(words))


def _bar(done: float, total: float, width: int = 24) -> Text:
    """A bar like rich's: the done part bright, the rest dim."""
    filled = round(width * min(1.0, done / total)) if total else 0
    return Text.assemble(("━" * filled, "magenta"), ("━" * (width - filled), "grey23"))


def _eta(elapsed: float, done_here: float, left: float) -> float | None:
    if done_here <= 0.05 or left <= 0:
        return None
    return elapsed / done_here * left


class SilentProgress:
    follows_workers = False

    def search_started(self, status: SearchStatus) -> None:
        pass

    def trial_started(self, number: int, params: dict[str, Any], epochs: int) -> None:
        pass

    def epoch(self, number: int, record: dict[str, Any]) -> None:
        pass

    def trial_finished(self, outcome: TrialOutcome, status: SearchStatus | None = None) -> None:
        pass

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        yield

    def close(self) -> None:
        pass


def make_progress(quiet: bool = False) -> ProgressSink:
    if quiet:
        return SilentProgress()
    return LiveView() if sys.stderr.isatty() else PlainProgress()


# --- worker processes -------------------------------------------------------------------------


class QueueProgress(SilentProgress):
    """A worker process's sink: trial starts and epochs go to the planner's live view.
    Finished trials reach it through the study, as from any other machine."""

    def __init__(self, events: Any):
        self.events = events

    def trial_started(self, number: int, params: dict[str, Any], epochs: int) -> None:
        self.events.put(("started", number, params, epochs))

    def epoch(self, number: int, record: dict[str, Any]) -> None:
        self.events.put(("epoch", number, record))


def forward_events(events: Any, progress: ProgressSink) -> None:
    """Hand what the workers sent so far to `progress` (never waits)."""
    while True:
        try:
            kind, number, *rest = events.get_nowait()
        except (queues.Empty, EOFError, OSError):
            return
        if kind == "started":
            progress.trial_started(number, *rest)
        else:
            progress.epoch(number, *rest)


Reviewer = Callable[[int, dict[str, Any]], "dict[str, Any] | None"]
