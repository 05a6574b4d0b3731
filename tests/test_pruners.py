"""Pruners that see a stack's peers: a trial is judged against the trials training beside it
at the same step, as well as finished ones."""

import optuna
import pytest

from hpsearch.pruners import (
    PeerHyperbandPruner,
    PeerMedianPruner,
    PeerSuccessiveHalvingPruner,
    bracket_of,
)


def running_peers(pruner, values_by_step, direction="minimize"):
    """A study whose trials are all RUNNING (a stack in its first epochs), each having reported
    `values_by_step[step][k]` for every step; returns the study and its trials."""
    study = optuna.create_study(pruner=pruner, direction=direction)
    trials = [study.ask() for _ in values_by_step[min(values_by_step)]]
    for step in sorted(values_by_step):
        for trial, value in zip(trials, values_by_step[step], strict=True):
            trial.report(value, step)
    return study, trials


def test_median_prunes_the_worse_half_of_a_stack_no_trial_of_which_has_finished():
    values = [0.1 * k for k in range(8)]
    study, trials = running_peers(PeerMedianPruner(5, 2), {3: values})
    verdicts = [t.should_prune() for t in trials]
    assert verdicts == [False] * 4 + [True] * 4


def test_median_waits_for_warm_up_and_enough_peers():
    study, trials = running_peers(PeerMedianPruner(5, 2), {2: [0.1 * k for k in range(8)]})
    assert not any(t.should_prune() for t in trials)  # step 2 is still warm-up
    study, trials = running_peers(PeerMedianPruner(5, 2), {3: [0.1, 0.2, 0.9]})
    assert not any(t.should_prune() for t in trials)  # 2 peers are fewer than 5


def test_median_follows_the_direction():
    values = [0.1 * k for k in range(8)]
    study, trials = running_peers(PeerMedianPruner(5, 2), {3: values}, "maximize")
    assert [t.should_prune() for t in trials] == [True] * 4 + [False] * 4


def test_successive_halving_keeps_the_best_third_at_a_rung():
    values = [0.1 * k for k in range(9)]
    study, trials = running_peers(PeerSuccessiveHalvingPruner(1, 3), {1: values})
    assert [t.should_prune() for t in trials] == [False] * 3 + [True] * 6


def test_successive_halving_judges_only_at_rungs():
    pruner = PeerSuccessiveHalvingPruner(1, 3)
    assert pruner.rung_steps(30) == [1, 3, 9, 27]
    study, trials = running_peers(pruner, {1: [0.0] * 9, 2: [0.1 * k for k in range(9)]})
    assert not any(t.should_prune() for t in trials)  # step 2 is not a rung


def test_hyperband_brackets_start_later_and_later():
    pruner = PeerHyperbandPruner(min_resource=1, max_resource=27, reduction_factor=3)
    assert [b.rung_steps(27)[0] for b in pruner.brackets] == [1, 3, 9, 27]
    counts = [0] * 4
    for number in range(400):
        counts[bracket_of("study", number, 4)] += 1
    assert min(counts) > 60  # trials spread over every bracket


@pytest.mark.parametrize("pruner", [PeerMedianPruner(), PeerSuccessiveHalvingPruner()])
def test_a_nan_value_is_pruned(pruner):
    study, trials = running_peers(pruner, {3: [float("nan"), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    assert trials[0].should_prune()
