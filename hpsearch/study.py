"""The Optuna study behind a run: storage, the budget lock, heartbeats, trial outcomes, and
recovery of trials that stopped without finishing.

A study lives in a journal file in the run folder (one machine, many processes) or in a database
(many machines). Each finished trial's outcome (state, reason, metrics) is stored on the trial
itself, so a study in a database can be summarized without the trial folders. The study also
carries what a worker joining from another machine needs (the spec, the data's fingerprint) and
how far the run is (its rounds, its state, the final best).
"""

from __future__ import annotations

import abc
import base64
import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.storages._heartbeat import BaseHeartbeat  # what fail_stale_trials requires
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import InputError
from hpsearch.outcome import Reason, TrialOutcome, interrupted_outcome
from hpsearch.outcome import TrialState as OutcomeState
from hpsearch.pareto import dominated
from hpsearch.runs import RunFolder, read_json, write_bytes, write_json
from hpsearch.spec import Bound, Spec, spec_from_dict
from hpsearch.storage import (
    DatabaseUnreachable,
    Ticker,
    connect_args,
    database_address,
    is_connection_error,
    mask_url,
    retrying,
)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
COUNTED = (*FINISHED, TrialState.RUNNING)

# Attributes of a trial: its outcome, where it runs, which trial it retries, why it was skipped.
OUTCOME_ATTR, PID_ATTR, HOST_ATTR = "outcome", "worker_pid", "worker_host"
RETRY_ATTR, REASON_ATTR, WEIGHTS_ATTR = "retry_of", "reason", "weights"
SEED_ATTR, RERANK_ATTR = "seed", "rerank_of"  # a re-ranking trial's seed and configuration
EDIT_OF_ATTR = "edit_of"  # panda --interactive: the proposal this trial's values replaced
# where a trial's folder is (its checkpoint), and the folder a retry continues from: on a shared
# file system a retry on another machine or batch task picks up the checkpoint it left
FOLDER_ATTR, RESUME_FOLDER_ATTR = "trial_folder", "resume_folder"
SHARED_WEIGHTS_LIMIT = 4 * 2**20  # bytes of model.pt a trial stores in a database study
# Attributes of the study: what a worker joining from another machine needs, how far it is.
SPEC_ATTR, FINGERPRINT_ATTR, ROUNDS_ATTR = "spec", "fingerprint", "rounds"
STATE_ATTR, FINAL_ATTR = "state", "final"

# Params as Optuna stores them -> the values a spec takes (see space.decode_params).
Decode = Callable[[dict[str, Any]], dict[str, Any]]


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna without its per-trial log lines, and without the warnings about heartbeats with
    ask-and-tell (deliberate here, see `heartbeat`); the previous settings come back after."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            # Optuna logs a dropped connection (with its SQL) before trying another query;
            # a lost database is said once, by the retry (see storage.retrying)
            logging.getLogger(_RDB_LOGGER).addFilter(_no_fallback_notes)
            yield
    finally:
        logging.getLogger(_RDB_LOGGER).removeFilter(_no_fallback_notes)
        optuna.logging.set_verbosity(verbosity)


_RDB_LOGGER = "optuna.storages._rdb.storage"


def _no_fallback_notes(record: logging.LogRecord) -> bool:
    return "Falling back to a slower alternative" not in record.getMessage()


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
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    beat = heartbeat_seconds()
    for attempt in range(5):
        try:
            # a worker started mid-run (a new round) meets a lost database like any other
            # call; one unreachable from the start was reported before (probe_storage)
            rdb = retrying(
                lambda: optuna.storages.RDBStorage(
                    url,
                    # a pooled connection that died with a server restart is replaced on checkout
                    engine_kwargs={"pool_pre_ping": True, "connect_args": connect_args(url)},
                    heartbeat_interval=beat,
                    grace_period=3 * beat,
                    heartbeat_stale_trial_callback=retry_stale,
                ),
                database_address(url),
            )
            return RetryingStorage(rdb, database_address(url))
        except DatabaseUnreachable:
            raise
        except (IntegrityError, ProgrammingError):
            # Workers starting together race to create Optuna's tables: the losers' CREATE
            # TABLE meets a table (or type) made a moment ago. They retry.
            time.sleep(0.2 * (attempt + 1))
            continue
        except Exception as exc:  # driver missing, server down, bad credentials
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            reason = reason.replace(url, mask_url(url))
            raise InputError(f"storage: cannot open {mask_url(url)}: {reason}") from None
    raise InputError(f"storage: cannot create Optuna's tables in {mask_url(url)}")


class RetryingStorage(optuna.storages.BaseStorage, BaseHeartbeat):
    """A database study whose every storage call is retried while the database is away (a
    restart, a dropped connection), so a blip costs a wait instead of the run. It wraps
    Optuna's RDBStorage the way Optuna itself does when handed one (in its cache).

    A write whose commit reached the database just before the connection dropped is sent
    again; Optuna's writes set one row's values, so that is harmless, except a new trial
    whose INSERT committed but whose reply was lost: it is made again, and the first copy
    stays RUNNING without a worker (a window of a few milliseconds per trial)."""

    def __init__(self, rdb: optuna.storages.RDBStorage, where: str):
        from optuna.storages._cached_storage import _CachedStorage

        self.rdb = rdb
        self.where = where  # HOST:PORT, for messages
        self._inner = _CachedStorage(rdb)

    @property
    def engine(self) -> Any:
        return self.rdb.engine


def _retried(name: str) -> Callable[..., Any]:
    def method(self: RetryingStorage, *args: Any, **kwargs: Any) -> Any:
        call = getattr(self._inner, name)
        return retrying(lambda: call(*args, **kwargs), self.where)

    method.__name__ = name
    return method


# every storage and heartbeat call Optuna makes, including the one private call of its
# fail_stale_trials
for _name in [
    *(n for n in vars(optuna.storages.BaseStorage) if not n.startswith("_")),
    *(n for n in vars(BaseHeartbeat) if not n.startswith("__")),
]:
    if callable(getattr(optuna.storages.BaseStorage, _name, None)) or callable(
        getattr(BaseHeartbeat, _name, None)
    ):
        setattr(RetryingStorage, _name, _retried(_name))
abc.update_abstractmethods(RetryingStorage)


def is_database(storage: optuna.storages.BaseStorage) -> bool:
    return isinstance(storage, (RetryingStorage, optuna.storages.RDBStorage))


# Optuna's tables that a study's reads filter by trial: their planner statistics matter
STUDY_TABLES = (
    "trials",
    "trial_params",
    "trial_values",
    "trial_user_attributes",
    "trial_system_attributes",
    "trial_intermediate_values",
    "trial_heartbeats",
)


def refresh_statistics(storage: optuna.storages.BaseStorage) -> None:
    """PostgreSQL: bring the query planner's statistics on Optuna's tables up to date.

    Optuna reads a study's new and unfinished trials by trial id; planned from statistics
    taken when the study was small, PostgreSQL answers that by scanning every trial of the
    study instead of using the primary key, so each read grows with the study. Autovacuum
    refreshes them on most servers, but not where it is off, or not yet; the planner calls
    this as the study grows. Best effort: a user who may not analyze the tables is skipped."""
    if not is_database(storage) or storage.engine.dialect.name != "postgresql":
        return
    from sqlalchemy import text

    with contextlib.suppress(Exception), storage.engine.begin() as connection:
        connection.execute(text(f"ANALYZE {', '.join(STUDY_TABLES)}"))


class Hold:
    """A budget lock while held; `lost` once the database dropped it before its release."""

    lost = False


@contextmanager
def budget_lock(
    storage: optuna.storages.BaseStorage, study_name: str, lock_dir: Path
) -> Iterator[Hold]:
    """Serialize "count the trials, then ask" among all workers so a budget is never overshot.

    A file lock serves one machine; a PostgreSQL advisory lock (or MySQL's GET_LOCK) serves
    workers on many machines sharing one database. The database ends a lock with the session
    that holds it: a connection lost while held (a restart) lets another worker count before
    this one's trials are in; the hold says so (`lost`), for `keep_within_budget`.
    """
    hold = Hold()
    if is_database(storage) and storage.engine.dialect.name in ("postgresql", "mysql"):
        with _database_lock(storage, study_name, hold):
            yield hold
        return
    run = RunFolder(lock_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    with run.ask_lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield hold
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _database_lock(storage: RetryingStorage, name: str, hold: Hold) -> Iterator[None]:
    from sqlalchemy import text

    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    if storage.engine.dialect.name == "postgresql":
        take, give = "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"
    else:
        take, give, key = "SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)", str(key)

    def acquire() -> Any:
        connection = storage.engine.connect()
        try:
            connection.execute(text(take), {"k": key})
        except BaseException:
            connection.close()
            raise
        return connection

    connection = retrying(acquire, storage.where)
    try:
        yield
    finally:
        try:
            # true (1) only when this session still held the lock
            hold.lost = not connection.execute(text(give), {"k": key}).scalar()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            hold.lost = True
        finally:
            with contextlib.suppress(Exception):  # a dead connection is only thrown away
                connection.close()


def keep_within_budget(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    name: str,
    lock_dir: Path,
    asked: list[optuna.Trial],
    target: int,
) -> list[optuna.Trial]:
    """After a lost budget lock: count again under the lock, and hand back (to the queue, as
    waiting trials nobody has started) those of `asked` that took the budget past `target`.
    Returns the trials to train."""
    with budget_lock(storage, name, lock_dir):
        excess = min(len(asked), max(0, budget_used(study) - target))
        keep, back = asked[: len(asked) - excess], asked[len(asked) - excess :]
        for trial in back:
            storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)  # noqa: SLF001
    return keep


def retried_number(trial: FrozenTrial | optuna.Trial) -> int | None:
    """The trial this one retries (after a lost heartbeat or a resume), or None."""
    retried = trial.user_attrs.get(RETRY_ATTR)
    return None if retried is None else int(retried)


def retry_attrs(trial: FrozenTrial) -> dict[str, Any]:
    """What a retry of `trial` carries: the trial it replaces and the folder of its checkpoint."""
    attrs: dict[str, Any] = {RETRY_ATTR: trial.number}
    if FOLDER_ATTR in trial.user_attrs:
        attrs[RESUME_FOLDER_ATTR] = trial.user_attrs[FOLDER_ATTR]
    return attrs


def retry_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's heartbeat callback: a trial whose worker stopped beating is queued again, once
    (a retry is not retried again); the retry names the trial it replaces."""
    if RETRY_ATTR in trial.user_attrs:
        return
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={**trial.user_attrs, **retry_attrs(trial)},
            # as Optuna's RetryHeartbeatStaleTrialCallback records it, for Optuna's own tools
            system_attrs={"failed_trial": trial.number, "retry_history": [trial.number]},
        )
    )


def replaced_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Trials that were retried: their retry replaces them."""
    return {n for n in map(retried_number, trials) if n is not None}


class TrialLedger:
    """A study's trials, tallied as they finish: what a worker asks before each trial (the
    budget used, whether a result beats the study) and what the planner asks on each tick
    (which trials finished since) cost the same at the ten-thousandth trial as at the first.

    Each `refresh` reads the study's trial list once (Optuna's cache: finished trials are not
    read from the storage again) and walks only the trials from the oldest unfinished one on;
    trials before it are finished, and a finished trial never changes, except that a retry
    queued later may replace it (a new trial, so it is walked)."""

    def __init__(self, study: optuna.Study):
        self.study = study
        self.trials: list[FrozenTrial] = []  # as the last refresh read them, by number
        self.low = 0  # every trial before this index is finished and tallied
        self.replaced: set[int] = set()  # trials a retry replaces
        self.counted_low = 0  # trials before `low` that count against the budget
        self.front_low: list[Sequence[float]] = []  # values no complete trial before low beats
        self._reported: set[int] = set()  # finished trials from `low` on, already handed out
        self._fresh: list[FrozenTrial] = []

    def refresh(self) -> list[FrozenTrial]:
        """Read the study again; returns its trials."""
        trials = self.study.get_trials(deepcopy=False)
        for trial in trials[self.low :]:
            retried = retried_number(trial)
            if retried is not None and retried not in self.replaced:
                self.replaced.add(retried)
                self.counted_low -= retried < self.low  # tallied as counted: it is not now
            if trial.state in FINISHED and trial.number not in self._reported:
                self._reported.add(trial.number)
                self._fresh.append(trial)
        while self.low < len(trials) and trials[self.low].state in FINISHED:
            settled = trials[self.low]
            self.counted_low += settled.number not in self.replaced
            if settled.state == TrialState.COMPLETE and settled.values is not None:
                self._keep_on_front(settled.values)
            self._reported.discard(settled.number)
            self.low += 1
        self.trials = trials
        return trials

    def budget_used(self) -> int:
        """Trials that count against the budget: finished or running, not ones replaced by a
        retry (as of the last refresh)."""
        recent = self.trials[self.low :]
        return self.counted_low + sum(
            t.state in COUNTED and t.number not in self.replaced for t in recent
        )

    def finished_since(self) -> list[FrozenTrial]:
        """Trials that finished since the last call (in number order)."""
        fresh, self._fresh = sorted(self._fresh, key=lambda t: t.number), []
        return fresh

    def beaten(self, values: Sequence[float]) -> bool:
        """Whether a complete trial dominates objective `values` (as of the last refresh): with
        one objective, whether one is strictly better."""
        recent = [
            t.values
            for t in self.trials[self.low :]
            if t.state == TrialState.COMPLETE and t.values is not None
        ]
        return dominated(values, [*self.front_low, *recent], self._directions())

    def _directions(self) -> list[str]:
        return [d.name.lower() for d in self.study.directions]

    def _keep_on_front(self, values: Sequence[float]) -> None:
        # a point one on the front does not beat can only push out points it beats: the front
        # stays as small as the trade-offs found (one value, with a single objective)
        directions = self._directions()
        if values in self.front_low or dominated(values, self.front_low, directions):
            return
        kept = [p for p in self.front_low if not dominated(p, [values], directions)]
        self.front_low = [*kept, list(values)]


def budget_used(study: optuna.Study) -> int:
    """Trials that count against the budget: finished or running, not ones replaced by a retry."""
    ledger = TrialLedger(study)
    ledger.refresh()
    return ledger.budget_used()


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
    # not retried: a beat the database missed is simply sent again at the next one, and the
    # trial loop is the one that waits for the database (and says so)
    beating = getattr(storage, "rdb", storage)

    def beat() -> None:
        while not stop.is_set():
            try:
                for trial_id in trial_ids:
                    beating.record_heartbeat(trial_id)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
            stop.wait(heartbeat_seconds())

    thread = threading.Thread(target=beat, name="hpsearch-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def tell_outcome(
    study: optuna.Study,
    trial: optuna.Trial,
    outcome: TrialOutcome,
    bounds: Sequence[Bound] = (),
) -> bool:
    """Finish a trial in the study, keeping its outcome on it for reports from the database,
    and how far it lies outside each of the objective's `bounds` (constraint values, which
    Optuna's samplers and ours steer by). False when the trial was finished already: the
    database was away longer than the heartbeat's grace, so another worker failed it and
    queued its retry."""
    try:
        # one storage write per attribute: the reason travels inside the outcome
        trial.set_user_attr(OUTCOME_ATTR, outcome.to_json())
        if outcome.state != OutcomeState.FAILED:
            for bound in bounds:
                violation = min(bound.violation(outcome.metrics), MAX_VIOLATION)
                trial.set_constraint(str(bound), violation)
        if outcome.state == OutcomeState.COMPLETE and outcome.value is not None:
            study.tell(trial, outcome.values or outcome.value)
        elif outcome.state == OutcomeState.PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


MAX_VIOLATION = 1e300  # a metric a trial lacks: this far outside (a constraint must be finite)


def beats_the_study(ledger: TrialLedger, values: list[float]) -> bool:
    """Whether objective `values` are as good as every complete trial's so far (a tie may still
    win: the best trial is the earliest of equals); with several objectives, whether no
    complete trial dominates them (the trial joins the front the pick is made from)."""
    ledger.refresh()
    return not ledger.beaten(values)


def share_weights(trial: optuna.Trial, model: Path) -> None:
    """Keep a trial's weights in the study (before it is told), so the machine that scores the
    best trial on test scores these very weights; models over SHARED_WEIGHTS_LIMIT are not."""
    if model.is_file() and model.stat().st_size <= SHARED_WEIGHTS_LIMIT:
        weights = base64.b64encode(model.read_bytes()).decode("ascii")
        # failed meanwhile by another worker (see tell_outcome): its retry shares its own
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            trial.set_user_attr(WEIGHTS_ATTR, weights)


def fetch_weights(study: optuna.Study, number: int, model: Path) -> bool:
    """Write trial `number`'s shared weights to `model`; False when the study has none."""
    trial = study.get_trials(deepcopy=False)[number]
    shared = trial.user_attrs.get(WEIGHTS_ATTR) if trial.number == number else None
    if shared is None:
        return False
    write_bytes(model, base64.b64decode(shared))
    return True


def skip_trial(study: optuna.Study, trial: optuna.Trial) -> None:
    """A proposal that is not trained (panda --interactive: stopped or edited): failed without
    a folder, and not counted in the summary."""
    trial.set_user_attr(REASON_ATTR, Reason.SKIPPED.value)
    study.tell(trial, state=TrialState.FAIL)


def replace_trial(
    study: optuna.Study, trial: optuna.Trial, params: dict[str, Any]
) -> optuna.Trial | None:
    """Panda --interactive edited this proposal: the proposal is failed as skipped (without a
    folder; it is not counted) and the edit starts now as a new trial, which takes the next
    number (Optuna cannot change a trial's params). None if another worker took it first.

    The edit is queued like any fixed point, then claimed at once the way `study.ask` pops
    its queue, so it runs next even when other points wait before it (a grid, retries)."""
    skip_trial(study, trial)
    study.enqueue_trial(params, user_attrs={EDIT_OF_ATTR: trial.number})
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    edit = max(
        (t for t in waiting if t.user_attrs.get(EDIT_OF_ATTR) == trial.number),
        key=lambda t: t.number,
    )
    storage = study._storage  # no public way to claim one queued trial
    if not storage.set_trial_state_values(edit._trial_id, state=TrialState.RUNNING):
        return None
    return optuna.Trial(study, edit._trial_id)


def first_beat(storage: optuna.storages.BaseStorage, trial: optuna.Trial) -> None:
    """A database trial's first heartbeat, as soon as it is asked for: a trial whose worker
    is lost before it starts training (killed, or the database went away) is then failed
    and retried like any other, instead of staying RUNNING with no heartbeat to miss."""
    if is_database(storage):
        storage.record_heartbeat(trial._trial_id)  # noqa: SLF001 - the id record_heartbeat takes


def mark_worker(trial: optuna.Trial, folder: Path) -> None:
    """Record which process trains `trial`, so its death can be noticed (see fail_running),
    and where its folder is, so a retry elsewhere can find its checkpoint."""
    trial.set_user_attr(PID_ATTR, os.getpid())
    trial.set_user_attr(HOST_ATTR, platform.node())
    trial.set_user_attr(FOLDER_ATTR, str(folder.resolve()))


def failure_reason(trial: FrozenTrial) -> Reason | None:
    """The kind of a finished trial's reason (diverged, interrupted, skipped, ...)."""
    stored = trial.user_attrs.get(OUTCOME_ATTR)
    if stored is not None:
        return Reason.of(stored.get("reason"))
    return Reason.of(trial.user_attrs.get(REASON_ATTR))


def outcome_of(trial: FrozenTrial, decode: Decode) -> TrialOutcome | None:
    """A finished trial's outcome as stored on it; None while it is waiting or running, and for
    a skipped proposal."""
    if trial.state not in FINISHED:
        return None
    stored = trial.user_attrs.get(OUTCOME_ATTR)
    if stored is not None:
        outcome = TrialOutcome.from_json(stored)
        if trial.state == TrialState.FAIL and outcome.state != OutcomeState.FAILED:
            # recorded, but the database went away before it was told: failed and retried
            return outcome.interrupted()
        return outcome
    reason = trial.user_attrs.get(REASON_ATTR)
    if Reason.of(reason) == Reason.SKIPPED:
        return None
    # Failed without a word from its worker: killed, or its heartbeat was lost.
    outcome = interrupted_outcome(trial.number, decode(trial.params))
    if reason is not None:
        outcome.reason = reason
    return outcome


def study_outcomes(study: optuna.Study, decode: Decode) -> list[TrialOutcome]:
    outcomes = (outcome_of(t, decode) for t in study.get_trials(deepcopy=False))
    return [o for o in outcomes if o is not None]


def load_existing_study(
    storage: optuna.storages.BaseStorage, name: str, wait: float = 0.0
) -> optuna.Study:
    """Load study `name`, waiting up to `wait` seconds for its creator to make it (saying so
    every few seconds)."""
    deadline = time.time() + wait
    where = getattr(storage, "where", "this storage")
    ticker = Ticker(f"waiting for study {name} at {where}")
    while True:
        try:
            return optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            if time.time() < deadline:
                ticker.tick()
                time.sleep(0.5)
                continue
        summaries = optuna.get_all_study_summaries(storage)
        names = ", ".join(s.study_name for s in summaries) or "none"
        raise InputError(f"--study: no study '{name}' in this storage (studies: {names})")


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
    warning = None
    if lines[-1].strip():
        try:
            json.loads(lines[-1])
        except ValueError:
            torn = path.with_name(path.name + ".torn")
            torn.write_bytes(data)
            path.write_bytes(b"\n".join(lines[:-1]) + b"\n")
            warning = (
                f"{path}: dropped an incomplete last record (a write cut short); "
                f"the original is kept as {torn.name}"
            )
    try:  # every record well-formed JSON, but one Optuna cannot replay (an unknown operation)
        optuna.get_all_study_names(open_storage(None, path))
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else "a record Optuna does not know"
        raise InputError(
            f"the study journal cannot be read back ({why}); restore the run folder from a "
            "backup, or start a new run (finished trials' folders stay readable)",
            source=str(path),
        ) from None
    return warning


# --- rounds -----------------------------------------------------------------------------------


def load_rounds(study: optuna.Study) -> list[dict[str, Any]]:
    """The rounds the planner recorded: index, first trial count, target and space of each."""
    return list(study.user_attrs.get(ROUNDS_ATTR, []))


def save_rounds(study: optuna.Study, run: RunFolder, rounds: list[dict[str, Any]]) -> None:
    study.set_user_attr(ROUNDS_ATTR, rounds)
    write_json(run.rounds, rounds)


# --- recovery ---------------------------------------------------------------------------------


def record_interrupted(run: RunFolder, number: int, params: dict[str, Any]) -> TrialOutcome:
    """A trial cut short (Ctrl-C, a dead worker): failed, reason interrupted. Its result.json
    says so too when its folder exists (what it had recorded is kept)."""
    folder = run.trial(number)
    if folder.result.exists():
        outcome = TrialOutcome.from_json(read_json(folder.result)).interrupted()
    else:
        outcome = interrupted_outcome(number, params)
    if folder.root.exists():
        write_json(folder.result, outcome.to_json())
    return outcome


def fail_interrupted(
    study: optuna.Study, trial: FrozenTrial, run: RunFolder, decode: Decode
) -> None:
    """Fail a RUNNING trial whose worker is gone, as interrupted."""
    outcome = record_interrupted(run, trial.number, decode(trial.params))
    live = optuna.trial.Trial(study, trial._trial_id)  # noqa: SLF001 - a running trial by id
    live.set_user_attr(OUTCOME_ATTR, outcome.to_json())
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    retry_cut_short(study, trial._trial_id)  # noqa: SLF001


def _on_this_host(trial: FrozenTrial, pid: int | None) -> bool:
    same_host = trial.user_attrs.get(HOST_ATTR, platform.node()) == platform.node()
    return same_host and (pid is None or trial.user_attrs.get(PID_ATTR) == pid)


def fail_running(
    study: optuna.Study, run: RunFolder, decode: Decode, pid: int | None = None
) -> None:
    """Fail the trials this machine's workers left RUNNING (only worker `pid`'s, if given):
    they died, or the run is stopping."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _on_this_host(trial, pid):
            fail_interrupted(study, trial, run, decode)


def fail_unclaimed(study: optuna.Study) -> None:
    """Resume: a trial asked for just as the database went away (its worker never heard the
    answer) is RUNNING with no worker and no heartbeat to miss; once older than the
    heartbeat's grace it is failed and queued again like a stale one."""
    grace = datetime.timedelta(seconds=3 * heartbeat_seconds())
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        start = trial.datetime_start
        if PID_ATTR not in trial.user_attrs and start is not None and now - start > grace:
            storage = study._storage  # noqa: SLF001 - fail one trial by id, as fail_stale does
            if storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):  # noqa: SLF001
                retry_stale(study, trial)


def retry_interrupted(study: optuna.Study) -> int:
    """Trials cut short (interrupted, or failed for a full disk) run again, once each, instead
    of using up the budget; how many."""
    trials = study.get_trials(deepcopy=False)
    replaced = replaced_numbers(trials)
    for trial in trials:
        if (
            trial.state == TrialState.FAIL
            and failure_reason(trial) in (Reason.INTERRUPTED, Reason.DISK)
            and RETRY_ATTR not in trial.user_attrs
            and trial.number not in replaced
        ):
            queue_retry(study, trial)
    # with those queued in a database at the stop itself (retry_cut_short) or after a lost
    # heartbeat: every retry waiting to run
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return sum(RETRY_ATTR in t.user_attrs for t in waiting)


def queue_retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue `trial`'s configuration again, as its retry (same seed, its checkpoint's folder)."""
    kept = {k: v for k, v in trial.user_attrs.items() if k in (SEED_ATTR, RERANK_ATTR)}
    study.enqueue_trial(trial.params, user_attrs={**kept, **retry_attrs(trial)})


def retry_cut_short(study: optuna.Study, trial_id: int) -> None:
    """A database study: a trial cut short by a clean stop (SIGTERM from a batch scheduler, a
    preempted task) is queued again at once, so whichever worker asks next continues it from
    its checkpoint; a resume would do the same, but a study shared by many tasks may never be
    resumed. Once per trial, as for a lost heartbeat."""
    storage = study._storage  # noqa: SLF001 - the storage the study was opened on
    if not is_database(storage):
        return
    trial = storage.get_trial(trial_id)
    if RETRY_ATTR not in trial.user_attrs:
        queue_retry(study, trial)


def finish_recorded(study: optuna.Study, bounds: Sequence[Bound] = ()) -> int:
    """Resume: a trial whose worker recorded its outcome but lost the database before telling
    it (it is still RUNNING) is told now, as it finished: nothing that finished is lost.
    Returns how many were."""
    finished = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        stored = trial.user_attrs.get(OUTCOME_ATTR)
        if stored is None:
            continue
        outcome = TrialOutcome.from_json(stored)
        live = optuna.trial.Trial(study, trial._trial_id)  # noqa: SLF001 - a running trial by id
        finished += tell_outcome(study, live, outcome, bounds)
    return finished


def recover(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    run: RunFolder,
    decode: Decode,
    bounds: Sequence[Bound] = (),
) -> int:
    """Resume: trials that finished but were never told are told; trials left RUNNING by
    dead processes are failed as interrupted, and every interrupted trial is retried once
    (returns how many were queued again).

    In a database, only trials whose heartbeat stopped count as dead (others may be training
    on another machine right now); in a journal, no process of the run is alive any more."""
    finish_recorded(study, bounds)
    if is_database(storage):
        fail_stale(study, storage)
        fail_unclaimed(study)
    else:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            fail_interrupted(study, trial, run, decode)
    return retry_interrupted(study)


def study_spec(study: optuna.Study, url: str, name: str, **update: Any) -> Spec:
    """The spec a study carries (see SPEC_ATTR), for `url`, with `update` applied."""
    raw = yaml.safe_load(study.user_attrs[SPEC_ATTR])
    return spec_from_dict({**raw, "storage": url, **update}, source=f"study {name}")
