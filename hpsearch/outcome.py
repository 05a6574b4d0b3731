"""What a trial and a run came to: typed states, failure reasons and the trial outcome.

States and reasons are `str` enums, so they compare equal to (and serialize as) the plain
strings of the run folder's JSON files: `TrialState.COMPLETE == "complete"`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any


class _Text(str, Enum):
    """An enum whose members are their text everywhere: in f-strings, JSON and comparisons."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class TrialState(_Text):
    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"


class Reason(_Text):
    """Why a trial did not complete. `DISK` and `ERROR` carry a detail: 'disk: No space left'."""

    DIVERGED = "diverged"
    PRUNED = "pruned"
    INTERRUPTED = "interrupted"  # Ctrl-C, a dead worker, a lost heartbeat: retried once
    SKIPPED = "skipped"  # panda --interactive: a proposal replaced by an edit (not counted)
    OOM = "oom"
    DISK = "disk"
    ERROR = "error"

    def detailed(self, detail: str) -> str:
        return f"{self.value}: {detail}"

    @classmethod
    def of(cls, text: str | None) -> Reason | None:
        """The kind of a recorded reason ('disk: No space left (...)' -> DISK); None if none."""
        if text is None:
            return None
        head = text.split(":", 1)[0].strip()
        try:
            return cls(head)
        except ValueError:
            return cls.ERROR


class RunState(_Text):
    RUNNING = "running"
    FINISHED = "finished"  # the budget (or the time) ran out
    STOPPED = "stopped"  # the user ended it (panda --interactive: s); the best is scored
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM: resumable


@dataclass
class TrialOutcome:
    """One finished trial as the study, its result.json and the summary record it."""

    number: int
    state: TrialState
    reason: str | None  # a Reason, possibly with a detail (see Reason.detailed)
    params: dict[str, Any]
    seed: int
    value: float | None = None  # the objective metric of the final model (the first one)
    metrics: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    epochs_run: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    stack: int = 1  # how many trials trained together with this one (itself included)
    resumed_from: int | None = None  # the trial whose checkpoint this one continued
    resumed_epoch: int = 0  # epochs already trained in that checkpoint
    rerank_of: int | None = None  # search.rerank: the trial whose configuration this re-trains
    # panda's rescues: {epoch, reason, lr} each, the lr being what training went on with
    rescues: list[dict[str, Any]] = field(default_factory=list)
    values: list[float] | None = None  # with several objectives: each one's value, in order

    def __post_init__(self) -> None:
        self.state = TrialState(self.state)  # from JSON: plain text

    def to_json(self) -> dict[str, Any]:
        reason = None if self.reason is None else str(self.reason)
        return {**asdict(self), "state": self.state.value, "reason": reason}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> TrialOutcome:
        """An outcome read back from result.json or the study (unknown keys are ignored)."""
        known = cls.__dataclass_fields__.keys()
        return cls(**{k: v for k, v in record.items() if k in known})

    @property
    def reason_kind(self) -> Reason | None:
        return Reason.of(self.reason)

    def interrupted(self) -> TrialOutcome:
        """This trial, cut short before it finished: failed, reason interrupted."""
        return TrialOutcome.from_json(
            {**self.to_json(), "state": TrialState.FAILED, "reason": Reason.INTERRUPTED}
        )


def interrupted_outcome(number: int, params: dict[str, Any], seed: int = 0) -> TrialOutcome:
    """A trial that never reported (killed, or stopped by Ctrl-C): failed, reason interrupted."""
    return TrialOutcome(number, TrialState.FAILED, Reason.INTERRUPTED, params, seed)
