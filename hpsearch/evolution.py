"""Regularized (aging) evolution as an Optuna sampler.

Each new trial copies a parent and changes one of its genes. The parent is the best of a
random three quarters of the `population` most recent complete trials: old results age out,
so a lucky draw of a noisy objective cannot stay the parent for the whole search, and the
random sample keeps the second best in play. The first `population / 2` proposals are random.
A child that repeats a configuration the study already has, finished or still running, is
mutated again, which matters in small discrete spaces where a one-gene change often leads back
to a known point.

Several children can be asked before any of them finishes (a stack, or several workers).
Each comes from the current window, and is decided at its first parameter rather than when
its trial is asked: a stack's trials are given their parameters one after another, so the
children before it are running trials with parameters by then, and it keeps apart from them.
Children of one stack often share the best parent, each with a different change; choosing a
different parent for each was worse in benchmarks/search_quality.py (batches of 4 and 8).

A numeric gene takes a Gaussian step. So does an ordered choice (numbers, hidden widths: see
`hpsearch.space.Param.ordered`), along its sorted options as an integer range of indices: a
step to a neighbour mostly, now and then two, where a jump to any option would forget that
128 units lie between 64 and 256. Other choices jump to any other option.

With several objectives (or constraints), the tournament ranks the window as NSGA-II does:
by non-dominated rank, feasible trials first, then by crowding distance, so the parents spread
along the front instead of crowding at one end of it.

The sampler reads nothing but the study's trials (params, values, directions and constraint
values), so several processes sharing one storage can each ask with their own seeded
instance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from hpsearch import pareto


class KnownConfigurations:
    """The configurations of the study's finished trials, each added once: shared by the
    samplers of one search, so a proposal's cost does not grow with the study."""

    def __init__(self) -> None:
        self.numbers: set[int] = set()
        self.keys: set[tuple] = set()


class EvolutionSampler(BaseSampler):
    """Tournament selection from the last `population` complete trials, then mutation.

    `sigma` is a numeric gene's step: its standard deviation as a fraction of the range
    (measured on the log axis for log ranges). `ordered` maps a categorical parameter to its
    choices in order, as Optuna stores them (`hpsearch.space.ordered_choices`).
    """

    def __init__(
        self,
        population: int = 16,
        tournament: int | None = None,
        startup: int | None = None,
        sigma: float = 0.15,
        seed: int | None = None,
        known: KnownConfigurations | None = None,
        ordered: Mapping[str, list[Any]] | None = None,
    ) -> None:
        self.population = population
        self.tournament = tournament or max(2, round(0.75 * population))
        self.startup = max(2, population // 2) if startup is None else startup
        self.sigma = sigma
        self._rng = np.random.RandomState(seed)
        self._random = RandomSampler(seed=None if seed is None else (seed + 1) % 2**32)
        self._children: dict[int, dict[str, Any]] = {}
        self._known = known or KnownConfigurations()
        self._ordered = dict(ordered or {})

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def _child(self, study: optuna.Study) -> dict[str, Any]:
        """A new child: a mutation of the tournament's winner that repeats no configuration
        finished or in flight; empty (so every gene is random) during the random start."""
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if len(complete) < self.startup:
            return {}
        recent = sorted(complete, key=lambda t: t.number)[-self.population :]
        directions = [d.name.lower() for d in study.directions]
        parent = self._select(recent, directions)
        running = self._remember_finished(trials)
        child = self._mutate(parent, genes=1)
        for attempt in range(1, 30):  # every fifth retry changes one gene more
            if _key(child) not in self._known.keys and _key(child) not in running:
                break
            child = self._mutate(parent, genes=1 + attempt // 5)
        return child

    def _remember_finished(self, trials: list[FrozenTrial]) -> set[tuple]:
        """Add finished trials' configurations to the known set (each once, so a proposal's
        cost does not grow with the study); return those of trials still unfinished."""
        running = set()
        for t in trials:
            if t.number in self._known.numbers:
                continue
            if t.state.is_finished():
                self._known.numbers.add(t.number)
                self._known.keys.add(_key(t.params))
            else:
                running.add(_key(t.params))
        return running

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        # The whole child is decided at once (conditional parameters make the set of genes
        # known only through the parent), at its first parameter: see the module docstring.
        if trial.number not in self._children:
            self._children[trial.number] = self._child(study)
        child = self._children[trial.number]
        if param_name in child and _contains(param_distribution, child[param_name]):
            return child[param_name]
        # a gene the parent lacked (a condition newly met) or whose range changed: random
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Any,
    ) -> None:
        self._children.pop(trial.number, None)

    def _select(self, recent: list[FrozenTrial], directions: list[str]) -> FrozenTrial:
        size = min(self.tournament, len(recent))
        chosen = self._rng.choice(len(recent), size, replace=False)
        if len(directions) == 1 and not any(t.constraints for t in recent):
            sign = -1.0 if directions[0] == "maximize" else 1.0
            return min((recent[i] for i in chosen), key=lambda t: (sign * t.value, t.number))
        order = self._standing(recent, directions)
        return recent[min(chosen, key=lambda i: (order[i], recent[i].number))]

    def _standing(self, trials: list[FrozenTrial], directions: list[str]) -> list[int]:
        """Each trial's place in the window: by constrained non-dominated rank, then by
        crowding distance within its rank (more room first)."""
        violations = [sum(max(0.0, c) for c in t.constraints.values()) for t in trials]
        points = [t.values for t in trials]
        rank = pareto.ranks(points, directions, violations)
        room = [0.0] * len(trials)
        for level in set(rank):
            members = [i for i in range(len(trials)) if rank[i] == level]
            for i, d in zip(members, pareto.crowding([points[i] for i in members]), strict=True):
                room[i] = d
        ranked = sorted(range(len(trials)), key=lambda i: (rank[i], -room[i], trials[i].number))
        place = [0] * len(trials)
        for position, i in enumerate(ranked):
            place[i] = position
        return place

    def _mutate(self, parent: FrozenTrial, genes: int) -> dict[str, Any]:
        """The parent's params with `genes` of them (chosen at random) changed."""
        names = [n for n, d in parent.distributions.items() if _mutable(d)]
        child = dict(parent.params)
        if not names:  # every parameter fixed: nothing to change
            return child
        count = min(len(names), genes)
        for index in self._rng.choice(len(names), count, replace=False):
            name = names[index]
            dist = parent.distributions[name]
            child[name] = self._mutate_gene(child[name], dist, self._ordered.get(name))
        return child

    def _mutate_gene(
        self, value: Any, dist: BaseDistribution, order: list[Any] | None = None
    ) -> Any:
        """A new value for one gene; `order` is a categorical's choices in order, if ordered."""
        if isinstance(dist, CategoricalDistribution):
            if _same_options(order, dist.choices) and value in order:
                # a step along the sorted options, as along an integer range of indices
                index = order.index(value)
                return order[self._mutate_gene(index, IntDistribution(0, len(order) - 1))]
            others = [c for c in dist.choices if c != value]
            return others[self._rng.randint(len(others))]
        assert isinstance(dist, FloatDistribution | IntDistribution)
        low, high = _axis(dist, dist.low), _axis(dist, dist.high)
        delta = self._rng.normal(0.0, self.sigma * (high - low))
        moved = _from_axis(dist, _reflect(_axis(dist, value) + delta, low, high))
        step = dist.step
        if step is None:
            return float(min(max(moved, dist.low), dist.high))
        snapped = _snap(dist, moved)
        if snapped == value:  # a mutation that rounds back to the parent would be wasted
            direction = 1 if delta >= 0 else -1
            if not dist.low <= value + direction * step <= dist.high:
                direction = -direction
            snapped = _snap(dist, value + direction * step)
        return snapped


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


def _same_options(order: list[Any] | None, choices: tuple[Any, ...]) -> bool:
    """Whether `order` ranks exactly the study's choices (a space changed since the sampler was
    made falls back to jumps)."""
    return order is not None and len(order) == len(choices) and all(c in order for c in choices)


def _mutable(dist: BaseDistribution) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return len(dist.choices) > 1
    return dist.high > dist.low


def _contains(dist: BaseDistribution, value: Any) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))  # noqa: SLF001
    except (ValueError, TypeError):
        return False


def _axis(dist: FloatDistribution | IntDistribution, value: float) -> float:
    return math.log(value) if dist.log else float(value)


def _from_axis(dist: FloatDistribution | IntDistribution, value: float) -> float:
    return math.exp(value) if dist.log else value


def _reflect(value: float, low: float, high: float) -> float:
    """Fold a step past a bound back inside, so the bounds are not over-sampled."""
    span = high - low
    if span <= 0:
        return low
    offset = (value - low) % (2 * span)
    return low + (offset if offset <= span else 2 * span - offset)


def _snap(dist: FloatDistribution | IntDistribution, value: float) -> Any:
    """The nearest point of a stepped range (ints: whole steps from low)."""
    step = dist.step
    count = round((value - dist.low) / step)
    count = min(max(count, 0), int(math.floor((dist.high - dist.low) / step + 1e-9)))
    snapped = dist.low + count * step
    if isinstance(dist, IntDistribution):
        return int(snapped)
    return float(snapped)
