"""Budgets and the round planner: what each round of a search runs. Pure: no study, no files.

A search is round 0 over the whole space, then one round per `refine` round, each over a space
tightened around the best trials so far. A round either leaves the proposing to the strategy's
sampler (round 0 of random, tpe and evolution) or names its points, which the engine queues
(grid, and every refine round). `hpsearch run` and `hpsearch.minimize` both plan with
`plan_round`: the strategy proposes, the caller evaluates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import optuna

from hpsearch.space import Param, grid_points
from hpsearch.spec import SearchSpec, Spec
from hpsearch.strategies import best_fraction, refine_points, tighten

DEFAULT_TRIALS = 40

# A trial asked from the study, with the values it suggested (what a worker trains).
Proposal = tuple[optuna.Trial, dict[str, Any]]


@dataclass(frozen=True)
class Round:
    """One planned round: the space it searches and what it runs."""

    index: int
    space: list[Param]
    points: list[dict[str, Any]] | None  # queued points, in order; None: the sampler proposes
    count: int  # trials this round adds to the budget


def round_count(search: SearchSpec) -> int:
    return 1 + (search.refine.rounds if search.refine else 0)


def split_budget(total: int, rounds: int) -> list[int]:
    """Split a trial budget over rounds as evenly as possible (earlier rounds get the rest)."""
    base, rest = divmod(total, rounds)
    return [base + (1 if i < rest else 0) for i in range(rounds)]


def round_budgets(search: SearchSpec) -> list[int | None]:
    """Each round's share of `search.trials`; None for a grid without a budget (its whole grid)."""
    if search.strategy == "grid" and not search.trials:
        return [None] * round_count(search)
    return split_budget(search.trials or DEFAULT_TRIALS, round_count(search))


def total_budget(search: SearchSpec, planned_target: int | None = None) -> int | None:
    """The search's trial budget. A grid without one is as large as its rounds turn out to be:
    the last planned round's target, when known."""
    reranked = search.rerank.top * search.rerank.seeds if search.rerank else 0
    if search.strategy == "grid" and not search.trials:
        return planned_target
    return (search.trials or DEFAULT_TRIALS) + reranked


def round_seed(seed: int, index: int) -> int:
    """The seed of refine round `index`'s random points."""
    return seed * 1009 + index


def spread(points: list[dict], budget: int | None) -> list[dict]:
    """At most `budget` grid points, evenly spaced through the grid's order so that a budget
    smaller than the grid still spans every axis (None: the whole grid)."""
    if budget is None or len(points) <= budget:
        return points
    step = len(points) / budget
    return [points[int(i * step)] for i in range(budget)]


def _key(point: dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True)


def unseen(points: list[dict], tried: list[dict[str, Any]]) -> list[dict]:
    """Points no earlier trial ran (a refine round never repeats a point). `tried` holds the
    decoded params of every trial so far."""
    done = {_key(t) for t in tried}
    return [p for p in points if _key(p) not in done]


def plan_round(
    search: SearchSpec,
    space: list[Param],
    index: int,
    *,
    previous: list[Param] | None,
    finished: list[tuple[dict[str, Any], float]],
    tried: list[dict[str, Any]],
    budget: int | None,
    seed: int,
    maximize: bool = False,
    spec: Spec | None = None,
) -> Round:
    """Round `index` of a search over `space`.

    `previous` is the space of the round before (None for round 0); `finished` the decoded
    params and objective value of every complete trial so far, `tried` the decoded params of
    every trial; `budget` this round's share (None: a whole grid). `spec` decides conditions on
    fields outside the space (None for `hpsearch.minimize`).
    """
    current = space
    if index > 0:
        keep = search.refine.keep if search.refine else 1.0
        current = tighten(previous or space, best_fraction(finished, keep, maximize))
    if index == 0 and search.strategy != "grid":
        return Round(index, current, None, budget if budget is not None else DEFAULT_TRIALS)
    if search.strategy == "grid":
        points = spread(grid_points(current, spec), budget)
    else:
        points = refine_points(current, budget or 0, round_seed(seed, index), spec)
    points = unseen(points, tried)
    return Round(index, current, points, len(points))
