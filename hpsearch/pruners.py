"""Pruners that judge a trial against the trials training beside it, not only finished ones.

Optuna's MedianPruner compares a trial with *completed* trials, and its SuccessiveHalvingPruner
with trials already judged at a rung. The members of a stack reach every epoch together, and
none has completed while the first stacks train: under those rules the first stacks are never
pruned (median), or their first member always passes a rung (successive halving). These
pruners read every other trial's value at the same step, running ones included; the workers
ask them only once every member of a stack has reported that step.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

_ALIVE = (TrialState.COMPLETE, TrialState.RUNNING)
_REPORTED = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED)


def values_at(
    study: optuna.Study,
    trial: FrozenTrial,
    step: int,
    states: tuple[TrialState, ...],
    among: Callable[[int], bool] | None = None,
) -> list[float]:
    """Every other trial's value at `step`, for trials in `states` (and `among` them, by
    number) that reported it."""
    values = []
    for other in study.get_trials(deepcopy=False, states=states):
        value = other.intermediate_values.get(step)
        if other.number == trial.number or value is None or math.isnan(value):
            continue
        if among is None or among(other.number):
            values.append(value)
    return values


class PeerMedianPruner(BasePruner):
    """Stop a trial whose value at this step is worse than the median of the other trials'
    values at the same step (complete ones, and ones still running), once at least
    `n_startup_trials` others have one, and only after `n_warmup_steps` steps."""

    def __init__(self, n_startup_trials: int = 5, n_warmup_steps: int = 2):
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step <= self.n_warmup_steps:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        others = values_at(study, trial, step, _ALIVE)
        if len(others) < self.n_startup_trials:
            return False
        median = float(np.median(others))
        return value > median if study.direction == StudyDirection.MINIMIZE else value < median


class PeerSuccessiveHalvingPruner(BasePruner):
    """Asynchronous successive halving: rungs at min_resource * eta**(rate + r) steps; at a
    rung a trial goes on only if its value is among the best 1/eta of all values reported at
    that step (its own included; by trials running beside it, finished or pruned); while
    fewer than eta trials have reached the rung, only a value as good as the best goes on.

    `bracket` and `brackets` make it one bracket of Hyperband: it judges only the trials
    assigned to the same bracket (see `bracket_of`)."""

    def __init__(
        self,
        min_resource: int = 1,
        reduction_factor: int = 3,
        min_early_stopping_rate: int = 0,
        bracket: int | None = None,
        brackets: int = 1,
    ):
        self.min_resource = min_resource
        self.reduction_factor = reduction_factor
        self.rate = min_early_stopping_rate
        self.bracket = bracket
        self.brackets = brackets

    def rung_steps(self, last: int) -> list[int]:
        steps, r = [], 0
        while (step := self.min_resource * self.reduction_factor ** (self.rate + r)) <= last:
            steps.append(step)
            r += 1
        return steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step not in self.rung_steps(step):
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        among = None
        if self.bracket is not None:

            def among(number: int) -> bool:
                return bracket_of(study.study_name, number, self.brackets) == self.bracket

        others = values_at(study, trial, step, _REPORTED, among)
        competing = sorted([*others, value])
        keep = max(0, len(competing) // self.reduction_factor - 1)
        if study.direction == StudyDirection.MAXIMIZE:
            return value < competing[-(keep + 1)]
        return value > competing[keep]


def bracket_of(study_name: str, number: int, brackets: int) -> int:
    """A trial's Hyperband bracket: a hash of the study and the trial number."""
    digest = hashlib.sha256(f"{study_name}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % brackets


class PeerHyperbandPruner(BasePruner):
    """Hyperband over peer-aware successive halving: trials are spread over brackets whose
    first rung comes later and later (each eta times the one before), so a slow starter
    assigned to a late bracket is judged only once it had time to show what it does."""

    def __init__(self, min_resource: int, max_resource: int, reduction_factor: int = 3):
        count = 1
        while min_resource * reduction_factor**count <= max_resource:
            count += 1
        self.brackets = [
            PeerSuccessiveHalvingPruner(min_resource, reduction_factor, rate, rate, count)
            for rate in range(count)
        ]

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        bracket = bracket_of(study.study_name, trial.number, len(self.brackets))
        return self.brackets[bracket].prune(study, trial)
