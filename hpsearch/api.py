"""`hpsearch.minimize`: the search strategies of `hpsearch run` on any Python objective.

The same samplers, grid points and refine (tightening) functions as a run, in memory: no run
folder, no files, no processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState
from pydantic import ValidationError

from hpsearch.errors import InputError
from hpsearch.space import Param, grid_points, parse_free_space, suggest, to_optuna_params
from hpsearch.spec import SearchSpec, describe_validation_error
from hpsearch.strategies import (
    DEFAULT_TRIALS,
    best_fraction,
    check_strategy,
    make_sampler,
    refine_points,
    round_budgets,
    spread,
    tighten,
    unseen,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class SearchResult:
    best_params: dict[str, Any]
    best_value: float
    trials: list[dict[str, Any]] = field(default_factory=list)  # number, params, value, state


def _search_spec(strategy: str, trials: int, options: dict[str, Any]) -> SearchSpec:
    try:
        search = SearchSpec.model_validate({"strategy": strategy, "trials": trials, **options})
    except ValidationError as exc:
        raise describe_validation_error(exc, "minimize", {}) from None
    check_strategy(search)
    return search


def _decode(params: list[Param], raw: dict[str, Any]) -> dict[str, Any]:
    by_path = {p.path: p for p in params}
    return {k: by_path[k].decode(v) for k, v in raw.items() if k in by_path}


def minimize(
    objective: Callable[[dict[str, Any]], float],
    space: dict[str, dict[str, Any]],
    strategy: str = "evolution",
    trials: int = DEFAULT_TRIALS,
    seed: int = 0,
    **options: Any,
) -> SearchResult:
    """Minimize `objective(params)` over `space` (the spec's `search.space` syntax).

    `options` are the spec's search options: `population` (evolution), `refine`
    (`{"rounds": R, "keep": f}`, grid and random). A non-finite value fails that evaluation.
    """
    search = _search_spec(strategy, trials, options)
    params = parse_free_space(space)
    if not params:
        raise InputError("space: give at least one parameter")
    study = optuna.create_study(sampler=make_sampler(search, seed), direction="minimize")
    rounds = 1 + (search.refine.rounds if search.refine else 0)
    budgets = round_budgets(trials, rounds)
    current = params
    for index in range(rounds):
        count = budgets[index]
        if index > 0:
            finished = [
                (t.params, t.value) for t in study.get_trials(states=(TrialState.COMPLETE,))
            ]
            best = best_fraction(finished, search.refine.keep, maximize=False)
            current = tighten(current, [_decode(params, b) for b in best])
        if search.strategy == "grid" or index > 0:  # queued points, as in `hpsearch run`
            if search.strategy == "grid":
                points = spread(grid_points(current, None), count)
            else:
                points = refine_points(current, count, seed * 1009 + index, None)
            points = unseen(points, params, study.trials)
            for point in points:
                study.enqueue_trial(to_optuna_params(params, point))
            count = len(points)
        for _ in range(count):
            trial = study.ask()
            values = suggest(trial, params, None)
            value = float(objective(values))
            if math.isfinite(value):
                study.tell(trial, value)
            else:
                study.tell(trial, state=TrialState.FAIL)
    return _result(study, params)


def _result(study: optuna.Study, params: list[Param]) -> SearchResult:
    records = [
        {
            "number": t.number,
            "params": _decode(params, t.params),
            "value": t.value,
            "state": t.state.name.lower(),
        }
        for t in study.trials
    ]
    complete = [r for r in records if r["state"] == "complete"]
    if not complete:
        raise InputError("minimize: every evaluation failed (the objective returned NaN or inf)")
    best = min(complete, key=lambda r: (r["value"], r["number"]))
    return SearchResult(best["params"], best["value"], records)
