"""Pareto fronts, constraints and the pick rules (pure numbers and outcomes)."""

import math

import pytest

from hpsearch.outcome import TrialOutcome
from hpsearch.pareto import (
    choose,
    crowding,
    dominated,
    front,
    front_outcomes,
    knee,
    ranks,
    violation,
)
from hpsearch.spec import ObjectiveSpec

BOTH_MIN = ["minimize", "minimize"]


def test_front_keeps_exactly_the_non_dominated_points():
    points = [[1, 5], [2, 2], [5, 1], [3, 3], [2, 2.5], [6, 6]]
    assert front(points, BOTH_MIN) == [0, 1, 2]
    # a tie is not domination: both equal points stay
    assert front([[1, 1], [1, 1], [2, 2]], BOTH_MIN) == [0, 1]


def test_front_follows_each_direction():
    points = [[0.9, 100], [0.8, 10], [0.95, 1000], [0.85, 1000]]
    # maximize accuracy, minimize size: the last point is worse than the first in both
    assert front(points, ["maximize", "minimize"]) == [0, 1, 2]
    assert front(points, ["minimize", "maximize"]) == [1, 3]


def test_constraints_put_feasible_points_first_and_else_the_least_violating():
    points = [[1, 1], [2, 2], [3, 3]]
    assert front(points, BOTH_MIN, [5.0, 0.0, 0.0]) == [1]
    assert front(points, BOTH_MIN, [5.0, 1.0, 2.0]) == [1]


def test_ranks_peel_fronts_in_order():
    points = [[1, 5], [2, 2], [5, 1], [3, 3], [4, 4], [6, 6]]
    assert ranks(points, BOTH_MIN) == [0, 0, 0, 1, 2, 3]


def test_crowding_favours_points_with_room_and_keeps_the_extremes():
    distance = crowding([[0, 10], [1, 9], [5, 5], [10, 0]])
    assert math.isinf(distance[0]) and math.isinf(distance[3])
    assert distance[2] > distance[1]


def test_knee_is_the_balanced_point_whatever_the_scales():
    # dev error in fractions, size in parameters: scaled to 0..1 each, (0.03, 2000) is nearest
    # the ideal point (0.02, 500) although it is neither's best
    points = [[0.02, 100_000], [0.03, 2_000], [0.10, 500]]
    assert knee(points, BOTH_MIN) == 1
    assert knee([[0.5, 7]], BOTH_MIN) == 0


def outcome(number: int, dev_error: float, n_params: float, **metrics: float) -> TrialOutcome:
    values = {"dev_error": dev_error, "n_params": n_params, **metrics}
    return TrialOutcome(number, "complete", None, {"n": number}, 0, dev_error, values)


TRIALS = [
    outcome(0, 0.02, 200_000, inference_ms=9.0),
    outcome(1, 0.03, 40_000, inference_ms=2.0),
    outcome(2, 0.05, 8_000, inference_ms=1.0),
    outcome(3, 0.05, 90_000, inference_ms=3.0),  # dominated by 1 and 2
    outcome(4, 0.30, 500, inference_ms=0.5),
]


def objective(**raw) -> ObjectiveSpec:
    return ObjectiveSpec.model_validate({"metrics": ["dev_error", "n_params"], **raw})


def test_front_of_outcomes_and_the_default_knee():
    obj = objective()
    assert [o.number for o in front_outcomes(obj, TRIALS)] == [0, 1, 2, 4]
    choice = choose(obj, TRIALS)
    assert choice.rule == "knee" and choice.met
    # scaled over the front, trial 2 (0.107, 0.038) lies nearest the ideal corner
    assert choice.trial.number == 2


@pytest.mark.parametrize(
    ("pick", "picked", "rule"),
    [
        ({"max": {"n_params": 50_000}}, 1, "best dev_error with n_params <= 50000"),
        ({"max": {"n_params": 10_000}}, 2, "best dev_error with n_params <= 10000"),
        (
            {"best": "n_params", "max": {"dev_error": 0.04}},
            1,
            "best n_params with dev_error <= 0.04",
        ),
        ({"min": {"n_params": 100_000}}, 0, "best dev_error with n_params >= 100000"),
        (
            {"best": "inference_ms", "max": {"dev_error": 0.1}},
            2,
            "best inference_ms with dev_error <= 0.1",
        ),
    ],
)
def test_pick_rules_choose_the_best_within_their_bounds(pick, picked, rule):
    choice = choose(objective(pick=pick), TRIALS)
    assert (choice.trial.number, choice.rule, choice.met) == (picked, rule, True)


def test_a_pick_no_trial_meets_falls_back_to_the_knee_and_says_so():
    choice = choose(objective(pick={"max": {"n_params": 100}}), TRIALS)
    assert not choice.met and "knee instead" in choice.rule
    assert choice.trial.number == choose(objective(), TRIALS).trial.number


def test_ties_by_the_pick_metric_go_to_the_trial_on_the_front():
    # 3 ties 2 on dev error but is bigger; the pick takes 2, whatever the numbering
    tied = [outcome(0, 0.05, 90_000), outcome(1, 0.05, 8_000)]
    assert choose(objective(pick={"max": {"n_params": 1e6}}), tied).trial.number == 1


def test_constraints_exclude_trials_from_the_front_and_the_pick():
    obj = objective(constraints=["inference_ms <= 2.5"])
    assert violation(obj, TRIALS[0]) == pytest.approx(6.5)
    assert violation(obj, TRIALS[1]) == 0
    assert [o.number for o in front_outcomes(obj, TRIALS)] == [1, 2, 4]
    assert choose(obj, TRIALS).trial.number != 0
    # a constraint on a metric a trial lacks: infeasible, not an error
    assert math.isinf(violation(objective(constraints=["train_seconds <= 1"]), TRIALS[0]))


def test_no_complete_trial_no_choice():
    assert choose(objective(), []) is None
    failed = TrialOutcome(0, "failed", "diverged", {}, 0)
    assert choose(objective(), [failed]) is None


def test_a_new_point_is_judged_against_the_others_alone():
    others = [[1, 5], [2, 2], [5, 1]]
    assert dominated([3, 3], others, BOTH_MIN)
    assert not dominated([2, 2], others, BOTH_MIN)  # a tie is not domination
    assert not dominated([0, 9], others, BOTH_MIN)
    assert not dominated([1, 1], [], BOTH_MIN)
