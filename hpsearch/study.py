"""The Optuna study behind a run: storage, the budget lock, heartbeats, trial outcomes, and
recovery of trials that stopped without finishing.

A study lives in a journal file in the run folder (one machine, many processes) or in a database
(many machines). Each finished trial's outcome (state, reason, metrics) is stored on the trial
itself, so a study in a database can be summarized without the trial folders. The study also
carries what a worker joining from another machine needs (the spec, the data's fingerprint) and
how far the run is (its rounds, its state, the final best).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import InputError
from hpsearch.outcome import Reason, TrialOutcome, interrupted_outcome
from hpsearch.outcome import TrialState as OutcomeState
from hpsearch.runs import RunFolder, read_json, write_bytes, write_json
from hpsearch.storage import mask_url

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
COUNTED = (*FINISHED, TrialState.RUNNING)

# Attributes of a trial: its outcome, where it runs, which trial it retries, why it was skipped.
OUTCOME_ATTR, PID_ATTR, HOST_ATTR = "outcome", "worker_pid", "worker_host"
RETRY_ATTR, REASON_ATTR, WEIGHTS_ATTR = "retry_of", "reason", "weights"
SEED_ATTR, RERANK_ATTR = "seed", "rerank_of"  # a re-ranking trial's seed and configuration
EDIT_OF_ATTR = "edit_of"  # panda --interactive: the proposal this trial's values replaced
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
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


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
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=beat,
                grace_period=3 * beat,
                heartbeat_stale_trial_callback=retry_stale,
            )
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
    run = RunFolder(lock_dir)
    run.root.mkdir(parents=True, exist_ok=True)
    with run.ask_lock.open("a") as handle:
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


def retried_number(trial: FrozenTrial | optuna.Trial) -> int | None:
    """The trial this one retries (after a lost heartbeat or a resume), or None."""
    retried = trial.user_attrs.get(RETRY_ATTR)
    return None if retried is None else int(retried)


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
            user_attrs={**trial.user_attrs, RETRY_ATTR: trial.number},
            # as Optuna's RetryHeartbeatStaleTrialCallback records it, for Optuna's own tools
            system_attrs={"failed_trial": trial.number, "retry_history": [trial.number]},
        )
    )


def replaced_numbers(trials: list[FrozenTrial]) -> set[int]:
    """Trials that were retried: their retry replaces them."""
    return {n for n in map(retried_number, trials) if n is not None}


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
    if outcome.state == OutcomeState.COMPLETE and outcome.value is not None:
        study.tell(trial, outcome.value)
    elif outcome.state == OutcomeState.PRUNED:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def beats_the_study(study: optuna.Study, value: float) -> bool:
    """Whether `value` is as good as every complete trial's so far (a tie may still win: the
    best trial is the earliest of equals)."""
    values = [t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    values = [v for v in values if v is not None]
    if not values:
        return True
    if study.direction == optuna.study.StudyDirection.MAXIMIZE:
        return value >= max(values)
    return value <= min(values)


def share_weights(trial: optuna.Trial, model: Path) -> None:
    """Keep a trial's weights in the study (before it is told), so the machine that scores the
    best trial on test scores these very weights; models over SHARED_WEIGHTS_LIMIT are not."""
    if model.is_file() and model.stat().st_size <= SHARED_WEIGHTS_LIMIT:
        trial.set_user_attr(WEIGHTS_ATTR, base64.b64encode(model.read_bytes()).decode("ascii"))


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


def mark_worker(trial: optuna.Trial) -> None:
    """Record which process trains `trial`, so its death can be noticed (see fail_running)."""
    trial.set_user_attr(PID_ATTR, os.getpid())
    trial.set_user_attr(HOST_ATTR, platform.node())


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
        return TrialOutcome.from_json(stored)
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


def retry_interrupted(study: optuna.Study) -> int:
    """Trials cut short (interrupted, or failed for a full disk) run again, once each, instead
    of using up the budget; how many."""
    trials = study.get_trials(deepcopy=False)
    replaced = replaced_numbers(trials)
    queued = 0
    for trial in trials:
        if (
            trial.state == TrialState.FAIL
            and failure_reason(trial) in (Reason.INTERRUPTED, Reason.DISK)
            and RETRY_ATTR not in trial.user_attrs
            and trial.number not in replaced
        ):
            kept = {k: v for k, v in trial.user_attrs.items() if k in (SEED_ATTR, RERANK_ATTR)}
            study.enqueue_trial(trial.params, user_attrs={**kept, RETRY_ATTR: trial.number})
            queued += 1
    return queued


def recover(
    study: optuna.Study, storage: optuna.storages.BaseStorage, run: RunFolder, decode: Decode
) -> int:
    """Resume: trials left RUNNING by dead processes are failed as interrupted, and every
    interrupted trial is retried once (returns how many were queued again).

    In a database, only trials whose heartbeat stopped count as dead (others may be training
    on another machine right now); in a journal, no process of the run is alive any more."""
    if is_database(storage):
        fail_stale(study, storage)
    else:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            fail_interrupted(study, trial, run, decode)
    return retry_interrupted(study)
