"""`hpsearch.minimize`: the search strategies of `hpsearch run` on any Python objective.

The same samplers (seeded per proposal) and round planner (`hpsearch.rounds`) as a run, in
memory: no run folder, no files, no processes. For the same space and seed, `minimize`
proposes the points `hpsearch run` proposes, in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
import optuna
from optuna.trial import TrialState
from pydantic import ValidationError

from hpsearch.errors import InputError
from hpsearch.pareto import front, knee
from hpsearch.rounds import plan_round, round_budgets, round_count
from hpsearch.space import decode_params, parse_free_space, suggest, to_optuna_params
from hpsearch.spec import SearchSpec, describe_validation_error
from hpsearch.strategies import ask_next, check_strategy, make_sampler
from hpsearch.study import quiet_optuna

# Options of `hpsearch run` that mean nothing for an objective evaluated here, one at a time.
_RUN_ONLY = ("mode", "workers", "timeout", "pruner", "stack", "panda", "space")


class TrialRecord(TypedDict):
    """One evaluation: its number, the params it got, the value it returned (a list, for an
    objective of several values) and its state ('complete', or 'fail' when a value was NaN
    or infinite)."""

    number: int
    params: dict[str, Any]
    value: float | list[float] | None
    state: str


@dataclass
class SearchResult:
    """What `minimize` found: the best params and value, and every evaluation in order. For
    an objective of several values, `front` holds the evaluations no other one dominates,
    and the best is the front's knee (see `hpsearch.pareto.knee`)."""

    best_params: dict[str, Any]
    best_value: float | list[float]
    trials: list[TrialRecord] = field(default_factory=list)
    front: list[TrialRecord] = field(default_factory=list)


def _search_spec(
    strategy: str,
    trials: int | None,
    population: int,
    refine: dict[str, Any] | None,
    space: dict[str, dict[str, Any]],
) -> SearchSpec:
    raw: dict[str, Any] = {"strategy": strategy, "trials": trials, "population": population}
    raw["space"] = space
    if refine is not None:
        raw["refine"] = refine
    try:
        search = SearchSpec.model_validate(raw)
    except ValidationError as exc:
        raise describe_validation_error(exc, "minimize", {}) from None
    check_strategy(search)
    return search


def minimize(
    objective: Callable[[dict[str, Any]], float | Sequence[float]],
    space: dict[str, dict[str, Any]],
    *,
    strategy: str = "evolution",
    trials: int | None = None,
    seed: int = 0,
    population: int = 16,
    refine: dict[str, Any] | None = None,
    **run_only: Any,
) -> SearchResult:
    """Minimize `objective(params)` over `space`, one evaluation at a time, in this process.

    Args:
        objective: called with a dict of values, one per active parameter of `space`; returns
            the value to minimize, or a list of values to minimize together (their Pareto
            front is searched; negate a value to maximize it). A NaN or infinite value fails
            that evaluation.
        space: the spec's `search.space` syntax (`{"lr": {"low": 1e-4, "high": 1, "log": True}}`);
            a range whose low and high are both integers is an integer range.
        strategy: grid, random, evolution or tpe.
        trials: the evaluation budget, spread over the rounds; None gives 40, or every grid
            point for `grid` (every round's grid, with `refine`).
        seed: seeds the samplers and refine rounds exactly as the spec's `seed` does in a run.
        population: evolution's window of recent trials.
        refine: `{"rounds": R, "keep": f}` (grid and random): R more rounds, each tightened
            around the best fraction f so far.

    Raises:
        InputError: a bad space or option.
        TypeError: an option of `hpsearch run` that `minimize` has no use for (workers,
            pruner, ...).
    """
    if run_only:
        named = ", ".join(sorted(run_only))
        known = [k for k in run_only if k in _RUN_ONLY]
        why = (
            "minimize evaluates one objective at a time in this process"
            if known
            else "it is not an option"
        )
        raise TypeError(
            f"minimize() does not take {named}: {why}; its options are strategy, trials, seed, "
            "population and refine"
        )
    if not space:
        raise InputError("space: give at least one parameter")
    search = _search_spec(strategy, trials, population, refine, space)
    params = parse_free_space(space)
    with quiet_optuna():
        study = optuna.create_study(sampler=make_sampler(search, seed), direction="minimize")
        budgets = round_budgets(search)
        current = None
        for index in range(round_count(search)):
            planned = plan_round(
                search,
                params,
                index,
                previous=current,
                finished=[
                    (decode_params(params, t.params), t.values[0])
                    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                ],
                tried=[decode_params(params, t.params) for t in study.get_trials(deepcopy=False)],
                budget=budgets[index],
                seed=seed,
            )
            current = planned.space
            for point in planned.points or []:  # queued points, as in `hpsearch run`
                study.enqueue_trial(to_optuna_params(params, point))
            for _ in range(planned.count):
                trial = ask_next(study)
                values = _values(objective(suggest(trial, params, None)))
                if len(values) != len(study.directions):
                    if study.get_trials(
                        deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)
                    ):
                        raise InputError(
                            f"minimize: the objective returned {len(values)} values, but "
                            f"{len(study.directions)} before"
                        )
                    study = _study_for(study, trial, values, search, seed)
                elif all(math.isfinite(v) for v in values):
                    study.tell(trial, values)
                else:
                    study.tell(trial, state=TrialState.FAIL)
    return _result(study, params)


def _values(returned: Any) -> list[float]:
    """The objective's value(s) as a list of floats (a number, or a sequence of numbers)."""
    if isinstance(returned, Sequence | np.ndarray) and not isinstance(returned, str):
        values = [float(v) for v in returned]
        if not values:
            raise InputError("minimize: the objective returned an empty list of values")
        return values
    return [float(returned)]


def _study_for(
    study: optuna.Study, first: optuna.Trial, values: list[float], search: SearchSpec, seed: int
) -> optuna.Study:
    """The first evaluation returned several values: the same search as a study of that many
    objectives, with that evaluation (told, or failed if a value is not finite) and the
    points still queued carried over."""
    if search.refine is not None:
        raise InputError(
            f"minimize: the objective returned {len(values)} values; refine tightens around "
            "the best by one value, so leave refine out (or return one value)"
        )
    directions = ["minimize"] * len(values)
    again = optuna.create_study(sampler=make_sampler(search, seed), directions=directions)
    told = all(math.isfinite(v) for v in values)
    again.add_trial(
        optuna.trial.create_trial(
            params=first.params,
            distributions=first.distributions,
            values=values if told else None,
            state=TrialState.COMPLETE if told else TrialState.FAIL,
            user_attrs=study.trials[first.number].user_attrs,
        )
    )
    for waiting in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        queued = waiting.system_attrs.get("fixed_params", waiting.params)
        again.enqueue_trial(queued, user_attrs=waiting.user_attrs)
    return again


def _result(study: optuna.Study, params: list) -> SearchResult:
    several = len(study.directions) > 1
    records: list[TrialRecord] = [
        {
            "number": t.number,
            "params": decode_params(params, t.params),
            "value": (list(t.values) if several else t.values[0]) if t.values else None,
            "state": t.state.name.lower(),
        }
        for t in study.trials
    ]
    complete = [r for r in records if r["state"] == "complete"]
    if not complete:
        raise InputError("minimize: every evaluation failed (the objective returned NaN or inf)")
    if not several:
        best = min(complete, key=lambda r: (r["value"], r["number"]))
        return SearchResult(best["params"], best["value"], records)
    directions = ["minimize"] * len(study.directions)
    points = [r["value"] for r in complete]
    on_front = [complete[i] for i in front(points, directions)]
    best = on_front[knee([r["value"] for r in on_front], directions)]
    return SearchResult(best["params"], best["value"], records, on_front)
