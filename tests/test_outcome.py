"""Typed states and reasons read and write as the plain strings of the run folder's JSON."""

import json

from hpsearch.outcome import Reason, RunState, TrialOutcome, TrialState, interrupted_outcome


def test_states_are_their_text():
    assert TrialState.COMPLETE == "complete" and f"{TrialState.FAILED}" == "failed"
    assert json.dumps([TrialState.PRUNED, RunState.FINISHED]) == '["pruned", "finished"]'
    assert str(Reason.OOM) == "oom"


def test_reasons_with_details_keep_their_kind():
    text = Reason.DISK.detailed("No space left on device (runs/x)")
    assert text == "disk: No space left on device (runs/x)"
    assert Reason.of(text) == Reason.DISK
    assert Reason.of("interrupted") == Reason.INTERRUPTED
    assert Reason.of("error: ValueError: boom") == Reason.ERROR
    assert Reason.of("something else") == Reason.ERROR
    assert Reason.of(None) is None


def test_an_outcome_round_trips_through_json():
    outcome = TrialOutcome(3, "complete", None, {"train.lr": 0.01}, 7, 0.1, {"dev_error": 0.1})
    assert outcome.state is TrialState.COMPLETE
    text = json.dumps(outcome.to_json())
    assert TrialOutcome.from_json(json.loads(text)) == outcome
    assert json.loads(text)["state"] == "complete"


def test_interrupted_keeps_what_was_recorded():
    outcome = TrialOutcome(3, "complete", None, {"a": 1}, 7, 0.1, {"dev_error": 0.1}, 4, 5)
    cut = outcome.interrupted()
    assert cut.state == TrialState.FAILED and cut.reason == Reason.INTERRUPTED
    assert cut.metrics == outcome.metrics and cut.epochs_run == 5 and cut.seed == 7
    assert outcome.state == TrialState.COMPLETE  # the original is not changed
    assert interrupted_outcome(2, {"a": 1}).to_json()["reason"] == "interrupted"
