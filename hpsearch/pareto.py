"""Several objectives at once: Pareto fronts, constraints, and the rule that picks one trial.

A trial dominates another when it is at least as good in every objective and better in one.
With constraints, a feasible trial dominates an infeasible one and, of two infeasible ones,
the smaller total violation dominates (Deb's rule, as Optuna's samplers read constraints).
The front is what no trial dominates; the search scores one of its trials on test: the knee
by default, or the best by one metric within bounds the spec names (`objective.pick`).

Pure numbers and outcomes: no torch, no study.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hpsearch.outcome import TrialOutcome, TrialState
from hpsearch.spec import ObjectiveSpec, Pick, default_direction


def _minimized(points: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    signs = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return np.asarray(points, dtype=float).reshape(len(points), len(directions)) * signs


def front(
    points: Sequence[Sequence[float]],
    directions: Sequence[str],
    violations: Sequence[float] | None = None,
) -> list[int]:
    """Indices of the points no other point dominates (with constraint `violations`, > 0
    meaning infeasible: the feasible front, or if none is feasible the least violating)."""
    if not len(points):
        return []
    candidates = np.arange(len(points))
    if violations is not None:
        excess = np.maximum(np.asarray(violations, dtype=float), 0.0)
        feasible = excess <= 0
        candidates = (
            candidates[feasible] if feasible.any() else np.flatnonzero(excess == excess.min())
        )
    y = _minimized(points, directions)[candidates]
    # in lexicographic order a point can be dominated only by earlier points, and if by any,
    # then by one already on the front: each is compared with the front alone
    kept: list[int] = []
    for i in np.lexsort(y.T[::-1]):
        if not kept or not _beaten(y[i], y[kept]):
            kept.append(int(i))
    return sorted(int(candidates[i]) for i in kept)


def _beaten(row: np.ndarray, others: np.ndarray) -> bool:
    """Whether any row of `others` (minimized) dominates `row`."""
    return bool((np.all(others <= row, axis=1) & np.any(others < row, axis=1)).any())


def dominated(
    point: Sequence[float], points: Sequence[Sequence[float]], directions: Sequence[str]
) -> bool:
    """Whether any of `points` dominates `point` (one pass over them: a new trial is judged
    against thousands without computing their front)."""
    if not len(points):
        return False
    return _beaten(_minimized([point], directions)[0], _minimized(points, directions))


def ranks(
    points: Sequence[Sequence[float]],
    directions: Sequence[str],
    violations: Sequence[float] | None = None,
) -> list[int]:
    """Each point's non-domination rank: 0 on the front, 1 on the front of the rest, ..."""
    rank = [-1] * len(points)
    left = list(range(len(points)))
    level = 0
    while left:
        sub_points = [points[i] for i in left]
        sub_violations = None if violations is None else [violations[i] for i in left]
        for j in front(sub_points, directions, sub_violations):
            rank[left[j]] = level
        left = [i for i in left if rank[i] < 0]
        level += 1
    return rank


def crowding(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II's crowding distance of points of one front: how much room each has around it
    (the extremes: infinite), so a choice among equals keeps the front spread out."""
    y = np.asarray(points, dtype=float).reshape(len(points), -1)
    distance = np.zeros(len(y))
    for column in y.T:
        order = np.argsort(column, kind="stable")
        span = column[order[-1]] - column[order[0]]
        distance[order[0]] = distance[order[-1]] = math.inf
        if span > 0 and len(y) > 2:
            distance[order[1:-1]] += (column[order[2:]] - column[order[:-2]]) / span
    return distance.tolist()


def knee(points: Sequence[Sequence[float]], directions: Sequence[str]) -> int:
    """The index of the point nearest the ideal one once each objective is scaled to 0..1
    over `points` (a front): the best compromise, where no objective is given up for much."""
    y = _minimized(points, directions)
    low, span = y.min(axis=0), np.ptp(y, axis=0)
    scaled = np.divide(y - low, span, out=np.zeros_like(y), where=span > 0)
    return int(np.argmin(np.linalg.norm(scaled, axis=1)))


# --- outcomes ---------------------------------------------------------------------------------


def violation(objective: ObjectiveSpec, outcome: TrialOutcome) -> float:
    """How far a trial lies outside the objective's constraints in total (0: feasible)."""
    return sum(max(0.0, b.violation(outcome.metrics)) for b in objective.bounds)


def objective_values(objective: ObjectiveSpec, metrics: dict[str, float]) -> list[float] | None:
    """The objective metrics of a trial, in order; None when one is missing or not finite."""
    values = [metrics.get(name) for name in objective.names]
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]  # type: ignore[arg-type]


def scored(objective: ObjectiveSpec, outcomes: list[TrialOutcome]) -> list[TrialOutcome]:
    """Complete trials that have every objective value."""
    return [
        o
        for o in outcomes
        if o.state == TrialState.COMPLETE and objective_values(objective, o.metrics) is not None
    ]


def front_outcomes(objective: ObjectiveSpec, outcomes: list[TrialOutcome]) -> list[TrialOutcome]:
    """The non-dominated complete trials (under the constraints), by number."""
    candidates = scored(objective, outcomes)
    points = [objective_values(objective, o.metrics) for o in candidates]
    kept = front(
        points, objective.resolved_directions, [violation(objective, o) for o in candidates]
    )  # type: ignore[arg-type]
    return sorted((candidates[i] for i in kept), key=lambda o: o.number)


@dataclass(frozen=True)
class Choice:
    """The trial a multi-objective search scores: by which rule, and whether the pick's
    bounds could be met (when none of the trials meets them, the knee is taken)."""

    trial: TrialOutcome
    rule: str
    met: bool = True

    def to_dict(self) -> dict[str, object]:
        return {"trial": self.trial.number, "rule": self.rule, "met": self.met}


def pick_rule(objective: ObjectiveSpec) -> str:
    pick = objective.pick
    if not isinstance(pick, Pick):
        return "knee"
    best = pick.best or objective.names[0]
    bounds = " and ".join(map(str, pick.bounds))
    return f"best {best}" + (f" with {bounds}" if bounds else "")


def choose(objective: ObjectiveSpec, outcomes: list[TrialOutcome]) -> Choice | None:
    """The picked trial: the knee of the front, or the best by `pick.best` among feasible
    trials within the pick's bounds (the knee when none is within them)."""
    on_front = front_outcomes(objective, outcomes)
    if not on_front:
        return None
    directions = objective.resolved_directions
    points = [objective_values(objective, o.metrics) for o in on_front]
    at_knee = on_front[knee(points, directions)]  # type: ignore[arg-type]
    pick = objective.pick
    if not isinstance(pick, Pick):
        return Choice(at_knee, "knee")
    best = pick.best or objective.names[0]
    names = objective.names
    direction = directions[names.index(best)] if best in names else default_direction(best)
    sign = -1.0 if direction == "maximize" else 1.0
    feasible = [o for o in scored(objective, outcomes) if violation(objective, o) == 0]
    within = [
        o
        for o in feasible
        if all(b.violation(o.metrics) <= 0 for b in pick.bounds)
        and math.isfinite(o.metrics.get(best, math.nan))
    ]
    rule = pick_rule(objective)
    if not within:
        return Choice(at_knee, f"{rule} (no trial within; the knee instead)", met=False)
    # of equals by that metric, one on the front (it is no worse in any other objective)
    fronted = {o.number for o in on_front}
    key = lambda o: (sign * o.metrics[best], o.number not in fronted, o.number)  # noqa: E731
    return Choice(min(within, key=key), rule)
