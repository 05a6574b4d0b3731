"""The Optuna study behind a run: storage, the budget lock, heartbeats, and trial outcomes.

A study lives in a journal file in the run folder (one machine, many processes) or in a database
(many machines). Each finished trial's outcome (state, reason, metrics) is stored on the trial
itself, so a study in a database can be summarized without the trial folders.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from hpsearch.errors import InputError
from hpsearch.objective import TrialOutcome
from hpsearch.storage import mask_url

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats with ask-and-tell are deliberate here (see `heartbeat`); Optuna marks the pieces
# experimental and warns that heartbeats are meant for study.optimize.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
COUNTED = (*FINISHED, TrialState.RUNNING)
OUTCOME_ATTR = "outcome"


def heartbeat_seconds() -> int:
    """How often a database worker says it is alive (HPSEARCH_HEARTBEAT_SECONDS, default 10).

    A trial whose worker stays silent for three heartbeats is failed and retried once.
    """
    return max(1, int(os.environ.get("HPSEARCH_HEARTBEAT_SECONDS", "10")))


def open_storage(url: str | None, journal: Path) -> optuna.storages.BaseStorage:
    """The journal file (url None) or the database at `url`, with heartbeats and retries."""
    if url is None:
        # A process killed while holding the journal's lock leaves it behind; others take it
        # over after the grace period (HPSEARCH_JOURNAL_GRACE_SECONDS, default 30).
        grace = int(os.environ.get("HPSEARCH_JOURNAL_GRACE_SECONDS", "30"))
        lock = optuna.storages.journal.JournalFileSymlinkLock(str(journal), grace_period=grace)
        return optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal), lock_obj=lock)
        )
    beat = heartbeat_seconds()
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=beat,
                grace_period=3 * beat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        except Exception as exc:  # driver missing, server down, bad credentials
            # Workers starting together race to create Optuna's tables; the losers retry.
            if "duplicate key" in str(exc) or "already exists" in str(exc):
                time.sleep(0.2 * (attempt + 1))
                continue
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            reason = reason.replace(url, mask_url(url))
            raise InputError(f"storage: cannot open {mask_url(url)}: {reason}") from None
    raise InputError(f"storage: cannot create Optuna's tables in {mask_url(url)}")


def is_database(storage: optuna.storages.BaseStorage) -> bool:
    return isinstance(storage, optuna.storages.RDBStorage)


@contextmanager
def budget_lock(storage: optuna.storages.BaseStorage, study_name: str, lock_dir: Path):
    """Serialize "count the trials, then ask" among all workers so a budget is never overshot.

    A file lock serves one machine; a PostgreSQL advisory lock (or MySQL's GET_LOCK) serves
    workers on many machines sharing one database.
    """
    if is_database(storage) and storage.engine.dialect.name in ("postgresql", "mysql"):
        with _database_lock(storage, study_name):
            yield
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / ".ask.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _database_lock(storage: optuna.storages.RDBStorage, name: str) -> Iterator[None]:
    from sqlalchemy import text

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    with storage.engine.connect() as connection:
        if storage.engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        else:
            connection.execute(text("SELECT GET_LOCK(:k, -1)"), {"k": str(key)})
            try:
                yield
            finally:
                connection.execute(text("SELECT RELEASE_LOCK(:k)"), {"k": str(key)})


def replaced_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Trials that were retried (after a lost heartbeat or a resume): their retry replaces them."""
    numbers = set()
    for trial in trials:
        # what RetryHeartbeatStaleTrialCallback.retried_trial_number reads, without the
        # experimental-API warning it raises on every call (thousands per trial in a big study)
        retried = trial.system_attrs.get("failed_trial")
        if retried is None:
            retried = trial.user_attrs.get("retry_of")
        if retried is not None:
            numbers.add(int(retried))
    return numbers


def budget_used(study: optuna.Study) -> int:
    """Trials that count against the budget: finished or running, not ones replaced by a retry."""
    trials = study.get_trials(deepcopy=False)
    replaced = replaced_numbers(trials)
    return sum(t.state in COUNTED and t.number not in replaced for t in trials)


def fail_stale(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """Database studies: fail (and queue a retry of) trials whose worker stopped beating."""
    if is_database(storage):
        optuna.storages.fail_stale_trials(study)


@contextmanager
def heartbeat(storage: optuna.storages.BaseStorage, trials: list[optuna.Trial]) -> Iterator[None]:
    """Keep database trials' heartbeats fresh while they train (Optuna does this only inside
    study.optimize, and hpsearch uses ask and tell). One thread beats for a whole stack."""
    if not is_database(storage):
        yield
        return
    stop = threading.Event()
    trial_ids = [trial._trial_id for trial in trials]  # noqa: SLF001 - the ids record_heartbeat takes

    def beat() -> None:
        while not stop.is_set():
            for trial_id in trial_ids:
                storage.record_heartbeat(trial_id)
            stop.wait(heartbeat_seconds())

    thread = threading.Thread(target=beat, name="hpsearch-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def tell_outcome(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome) -> None:
    """Finish a trial in the study, keeping its outcome on it for reports from the database."""
    # one storage write per attribute: the reason travels inside the outcome
    trial.set_user_attr(OUTCOME_ATTR, outcome.to_json())
    if outcome.state == "complete" and outcome.value is not None:
        study.tell(trial, outcome.value)
    elif outcome.state == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def failure_reason(trial: optuna.trial.FrozenTrial) -> str | None:
    """A finished trial's reason (diverged, interrupted, skipped, ...), wherever it was kept."""
    stored = trial.user_attrs.get(OUTCOME_ATTR)
    if stored is not None:
        return stored.get("reason")
    return trial.user_attrs.get("reason")


def outcome_of(trial: optuna.trial.FrozenTrial, decode) -> TrialOutcome | None:
    """A finished trial's outcome as stored on it; None while it is waiting or running."""
    if trial.state not in FINISHED:
        return None
    stored = trial.user_attrs.get(OUTCOME_ATTR)
    if stored is not None:
        return TrialOutcome(**stored)
    reason = trial.user_attrs.get("reason")
    if reason == "skipped":
        return None
    # Failed without a word from its worker: killed, or its heartbeat was lost.
    return TrialOutcome(
        number=trial.number,
        state="failed",
        reason=reason or "interrupted",
        params=decode(trial.params),
        seed=0,
    )


def study_outcomes(study: optuna.Study, decode) -> list[TrialOutcome]:
    outcomes = (outcome_of(t, decode) for t in study.get_trials(deepcopy=False))
    return [o for o in outcomes if o is not None]


def load_existing_study(
    storage: optuna.storages.BaseStorage, name: str, wait: float = 0.0
) -> optuna.Study:
    """Load study `name`, waiting up to `wait` seconds for its creator to make it."""
    deadline = time.time() + wait
    while True:
        try:
            return optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            if time.time() < deadline:
                time.sleep(0.5)
                continue
        summaries = optuna.get_all_study_summaries(storage)
        names = ", ".join(s.study_name for s in summaries) or "none"
        raise InputError(f"--study: no study '{name}' in this storage (studies: {names})")


def set_attrs(study: optuna.Study, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        study.set_user_attr(key, value)


def repair_journal(path: Path) -> str | None:
    """Check a journal file before reopening it. A last record cut short mid-write (a killed
    process, a full disk) is dropped, keeping a copy of the original as study.log.torn;
    returns a warning then. Damage anywhere else is an input error naming the line."""
    if not path.exists():
        return None
    data = path.read_bytes()
    lines = data.split(b"\n")
    # a complete journal ends with a newline, so the last element is empty
    for number, line in enumerate(lines[:-1], start=1):
        try:
            json.loads(line)
        except ValueError:
            raise InputError(
                f"line {number} of the study journal is damaged; restore the run folder from a "
                "backup, or start a new run (finished trials' folders stay readable)",
                source=str(path),
            ) from None
    if lines[-1].strip():
        try:
            json.loads(lines[-1])
        except ValueError:
            torn = path.with_name(path.name + ".torn")
            torn.write_bytes(data)
            path.write_bytes(b"\n".join(lines[:-1]) + b"\n")
            return (
                f"{path}: dropped an incomplete last record (a write cut short); "
                f"the original is kept as {torn.name}"
            )
    return None
