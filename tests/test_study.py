"""The study layer alone, on a journal file in tmp_path: the budget lock, journal repair,
outcomes stored on trials, retries and recovery. No training."""

import logging
import os
import random
import threading
import time

import optuna
import pytest
from optuna.trial import TrialState

from hpsearch.errors import InputError
from hpsearch.outcome import Reason, TrialOutcome
from hpsearch.pareto import dominated
from hpsearch.runs import RunFolder, read_json, write_json
from hpsearch.study import (
    OUTCOME_ATTR,
    TrialLedger,
    budget_lock,
    budget_used,
    fail_running,
    failure_reason,
    load_rounds,
    mark_worker,
    open_storage,
    outcome_of,
    queue_retry,
    quiet_optuna,
    record_interrupted,
    recover,
    repair_journal,
    replaced_numbers,
    retry_interrupted,
    save_rounds,
    skip_trial,
    study_outcomes,
    tell_outcome,
)


def identity(params):
    return dict(params)


@pytest.fixture
def run(tmp_path) -> RunFolder:
    return RunFolder(tmp_path / "run")


@pytest.fixture
def study(run):
    run.root.mkdir()
    storage = open_storage(None, run.study_log)
    with quiet_optuna():
        yield optuna.create_study(storage=storage, study_name="s")


def ask(study, x=0.5):
    """A running trial with params {"x": x} (none when x is None)."""
    if x is None:
        return study.ask()
    study.enqueue_trial({"x": x})
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    return trial


def complete(number, value, params=None):
    return TrialOutcome(number, "complete", None, params or {}, seed=1, value=value)


# --- budget lock ------------------------------------------------------------------------------


def test_budget_lock_serializes_count_then_ask(study, run):
    """Without the lock, two askers that both see room would overshoot the budget."""
    target, made = 6, []

    def worker():
        while True:
            with budget_lock(study._storage, "s", run.root):
                if budget_used(study) >= target:
                    return
                time.sleep(0.01)  # widen the window between counting and asking
                made.append(study.ask().number)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(made) == list(range(target))
    assert run.ask_lock.exists()


# --- outcomes on trials -----------------------------------------------------------------------


def test_outcome_travels_with_the_trial(study):
    trial = ask(study)
    tell_outcome(study, trial, complete(trial.number, 0.25, {"x": 0.5}))
    frozen = study.trials[0]
    assert frozen.state == TrialState.COMPLETE and frozen.value == 0.25
    outcome = outcome_of(frozen, identity)
    assert outcome == complete(0, 0.25, {"x": 0.5})
    assert outcome.state == "complete"


def test_pruned_and_failed_outcomes(study):
    pruned, failed = ask(study), ask(study)
    tell_outcome(study, pruned, TrialOutcome(0, "pruned", Reason.PRUNED, {}, 1))
    tell_outcome(study, failed, TrialOutcome(1, "failed", Reason.DISK.detailed("full"), {}, 1))
    states = [t.state for t in study.trials]
    assert states == [TrialState.PRUNED, TrialState.FAIL]
    assert failure_reason(study.trials[1]) == Reason.DISK
    assert outcome_of(study.trials[1], identity).reason == "disk: full"


def test_running_waiting_and_skipped_trials_have_no_outcome(study):
    ask(study)  # running
    skip_trial(study, ask(study, x=None))
    study.enqueue_trial({"x": 0.1})  # waiting
    trials = study.get_trials()
    assert [outcome_of(t, identity) for t in trials] == [None, None, None]
    assert study_outcomes(study, identity) == []


def test_a_trial_failed_without_a_word_reads_as_interrupted(study):
    trial = ask(study, x=0.75)
    study.tell(trial, state=TrialState.FAIL)  # its worker died before telling anything
    outcome = outcome_of(study.trials[0], lambda p: {"decoded": p["x"]})
    assert outcome.state == "failed" and outcome.reason == Reason.INTERRUPTED
    assert outcome.params == {"decoded": 0.75}


def test_unknown_keys_in_a_stored_outcome_are_ignored(study):
    trial = ask(study)
    trial.set_user_attr(OUTCOME_ATTR, {**complete(0, 0.5).to_json(), "future_key": 1})
    study.tell(trial, 0.5)
    assert outcome_of(study.trials[0], identity).value == 0.5


# --- retries and recovery ---------------------------------------------------------------------


def test_retried_trials_do_not_count_twice(study):
    first = ask(study)
    tell_outcome(study, first, TrialOutcome(0, "failed", Reason.INTERRUPTED, {"x": 0.5}, 1))
    retry_interrupted(study)
    retry_interrupted(study)  # once only
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
    assert replaced_numbers(study.get_trials()) == {0}
    assert budget_used(study) == 0  # the failure is replaced; the retry is not asked yet
    retry = study.ask()
    assert retry.suggest_float("x", 0.0, 1.0) == 0.5  # the same configuration
    assert budget_used(study) == 1


def test_a_retry_that_is_interrupted_again_is_not_retried(study):
    first = ask(study)
    tell_outcome(study, first, TrialOutcome(0, "failed", Reason.INTERRUPTED, {}, 1))
    retry_interrupted(study)
    second = study.ask()
    tell_outcome(study, second, TrialOutcome(1, "failed", Reason.INTERRUPTED, {}, 1))
    retry_interrupted(study)
    assert study.get_trials(states=(TrialState.WAITING,)) == []


def test_other_failures_are_not_retried(study):
    trial = ask(study)
    tell_outcome(study, trial, TrialOutcome(0, "failed", Reason.DIVERGED, {}, 1))
    retry_interrupted(study)
    assert study.get_trials(states=(TrialState.WAITING,)) == []


def test_recover_fails_running_trials_and_retries_them(study, run):
    trial = ask(study, x=0.3)
    folder = run.trial(trial.number)
    folder.root.mkdir(parents=True)
    write_json(folder.result, {**complete(0, None, {"x": 0.3}).to_json(), "epochs_run": 4})
    recover(study, study._storage, run, identity)
    (failed, waiting) = study.get_trials()
    assert failed.state == TrialState.FAIL and failure_reason(failed) == Reason.INTERRUPTED
    assert waiting.state == TrialState.WAITING
    assert study.ask().suggest_float("x", 0.0, 1.0) == 0.3
    written = read_json(folder.result)
    assert written["state"] == "failed" and written["reason"] == "interrupted"
    assert written["epochs_run"] == 4  # what the trial had recorded is kept


def test_recover_tells_a_trial_that_finished_but_was_never_told(study, run):
    # its worker recorded the outcome, then lost the database before telling it
    trial = ask(study, x=0.3)
    trial.set_user_attr(OUTCOME_ATTR, complete(trial.number, 0.25, {"x": 0.3}).to_json())
    retried = recover(study, study._storage, run, identity)
    (told,) = study.get_trials()
    assert retried == 0 and told.state == TrialState.COMPLETE and told.value == 0.25
    assert outcome_of(told, identity).value == 0.25


def test_a_recorded_outcome_the_study_failed_reads_as_interrupted(study):
    # recorded as complete, but failed meanwhile (its heartbeat was lost): it was retried, so
    # it must not also be listed as complete
    trial = ask(study)
    trial.set_user_attr(OUTCOME_ATTR, complete(trial.number, 0.25).to_json())
    study.tell(trial, state=TrialState.FAIL)
    outcome = outcome_of(study.get_trials()[0], identity)
    assert outcome.state == "failed" and outcome.reason == Reason.INTERRUPTED
    assert outcome.metrics == {} and outcome.value == 0.25  # what it had recorded stays


def test_fail_running_only_touches_the_dead_workers_trials(study, run):
    mine, other = ask(study), ask(study)
    mark_worker(mine, run.trial(mine.number).root)
    other.set_user_attr("worker_pid", -1)
    other.set_user_attr("worker_host", "another-machine")
    fail_running(study, run, identity, pid=os.getpid())
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.RUNNING]
    fail_running(study, run, identity)  # this host's trials only
    assert study.get_trials()[1].state == TrialState.RUNNING


def test_record_interrupted_without_a_folder_writes_nothing(run):
    outcome = record_interrupted(run, 7, {"x": 1})
    assert outcome.reason == Reason.INTERRUPTED and outcome.params == {"x": 1}
    assert not run.trial(7).root.exists()


# --- rounds record ----------------------------------------------------------------------------


def test_rounds_are_recorded_in_the_study_and_the_run_folder(study, run):
    assert load_rounds(study) == []
    rounds = [{"round": 0, "start": 0, "target": 4, "space": {"x": {"low": 0.0, "high": 1.0}}}]
    save_rounds(study, run, rounds)
    assert load_rounds(study) == rounds
    assert read_json(run.rounds) == rounds


# --- journal repair ---------------------------------------------------------------------------


def _journal(run, trials: int) -> None:
    """A real journal: a study with `trials` finished trials, as Optuna writes it."""
    run.root.mkdir(exist_ok=True)
    study = optuna.create_study(storage=open_storage(None, run.study_log), study_name="s")
    for _ in range(trials):
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0, 1))


def test_a_torn_last_record_is_dropped_and_kept_aside(run):
    _journal(run, 2)
    intact = run.study_log.read_bytes()
    original = intact + b'{"op_code": 4, "tru'
    run.study_log.write_bytes(original)
    warning = repair_journal(run.study_log)
    assert "incomplete last record" in warning
    assert run.study_log.read_bytes() == intact
    assert (run.root / "study.log.torn").read_bytes() == original


def test_damage_before_the_end_names_the_line(run):
    _journal(run, 1)
    run.study_log.write_text('{"op_code": 0}\nnot json\n{"op_code": 1}\n')
    with pytest.raises(InputError, match="line 2 of the study journal is damaged"):
        repair_journal(run.study_log)


def test_an_intact_or_missing_journal_needs_no_repair(run):
    assert repair_journal(run.study_log) is None
    _journal(run, 1)
    assert repair_journal(run.study_log) is None


def test_a_journal_optuna_cannot_replay_is_refused(run):
    _journal(run, 1)
    with run.study_log.open("a") as journal:
        journal.write('{"op_code": 99, "worker_id": "x"}\n')  # well-formed, but no operation
    with pytest.raises(InputError, match="cannot be read back"):
        repair_journal(run.study_log)


# --- global state -----------------------------------------------------------------------------


def test_quiet_optuna_restores_what_it_changed():
    optuna.logging.set_verbosity(logging.INFO)
    with quiet_optuna():
        assert optuna.logging.get_verbosity() == logging.WARNING
    assert optuna.logging.get_verbosity() == logging.INFO


# --- the ledger: tallies that do not grow with the study ---------------------------------------


def _brute_budget(trials):
    replaced = replaced_numbers(trials)
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return sum(t.state in counted and t.number not in replaced for t in trials)


def _brute_beaten(trials, values, directions):
    points = [t.values for t in trials if t.state == TrialState.COMPLETE]
    return dominated(values, points, directions)


@pytest.mark.parametrize("directions", [["minimize"], ["minimize", "maximize"]], ids=["one", "two"])
def test_the_ledger_agrees_with_a_full_count_whatever_the_order_of_events(directions):
    """Trials finish out of order, fail, are retried long after they finished (a resume) and
    the ledger is read between any two events: its budget, its judgement of new values and
    the trials it hands out as finished always match a count over every trial."""
    rng = random.Random(7)
    with quiet_optuna():
        study = optuna.create_study(directions=directions)
    ledger = TrialLedger(study)
    running: list[optuna.Trial] = []
    handed_out: list[int] = []
    for _ in range(400):
        event = rng.random()
        if event < 0.4 or not running:
            running.append(study.ask())
        elif event < 0.85:
            trial = running.pop(rng.randrange(len(running)))
            if rng.random() < 0.7:
                # few distinct values, as error rates on a small dev set: ties are common
                study.tell(trial, [rng.randint(0, 6) / 6 for _ in directions])
            else:
                study.tell(trial, state=rng.choice([TrialState.FAIL, TrialState.PRUNED]))
        else:
            failed = [
                t
                for t in study.get_trials(states=(TrialState.FAIL,))
                if t.number not in replaced_numbers(study.get_trials())
            ]
            if failed:
                queue_retry(study, rng.choice(failed))
        if rng.random() < 0.5:
            ledger.refresh()
            handed_out += [t.number for t in ledger.finished_since()]
            trials = study.get_trials()
            assert ledger.budget_used() == _brute_budget(trials)
            values = [rng.randint(0, 6) / 6 for _ in directions]
            assert ledger.beaten(values) == _brute_beaten(trials, values, directions)
    ledger.refresh()
    handed_out += [t.number for t in ledger.finished_since()]
    finished = [t.number for t in study.get_trials() if t.state.is_finished()]
    assert sorted(handed_out) == finished  # each finished trial once
    assert ledger.low > 0  # old trials were settled, not walked again


def test_a_retry_queued_after_its_trial_was_settled_uncounts_it(study):
    """A resume retries a trial the ledger tallied long ago: the budget drops by one."""
    ledger = TrialLedger(study)
    first = ask(study)
    tell_outcome(study, first, TrialOutcome(0, "failed", Reason.INTERRUPTED, {"x": 0.5}, 1))
    tell_outcome(study, ask(study), complete(1, 0.3))
    ledger.refresh()
    assert ledger.low == 2 and ledger.budget_used() == 2
    retry_interrupted(study)
    ledger.refresh()
    assert ledger.budget_used() == 1 == budget_used(study)
