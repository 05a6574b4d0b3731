"""Search strategies: the search section -> an Optuna sampler, plus pure refine (tightening).

The strategy proposes, the engine evaluates. Grid points are handed to workers through Optuna's
queue of waiting trials (each popped once), so no point runs twice; the others are stock
samplers seeded from the spec (evolution is our own, in `hpsearch.evolution`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from hpsearch.errors import InputError
from hpsearch.evolution import EvolutionSampler, KnownConfigurations
from hpsearch.pruners import PeerHyperbandPruner, PeerMedianPruner, PeerSuccessiveHalvingPruner
from hpsearch.space import Param, ordered_choices, suggest
from hpsearch.spec import ParamSpec, SearchSpec, Spec

PROPOSAL_ATTR = "proposal"  # a sampled trial's place among the search's proposals


def proposal_seed(seed: int, index: int) -> int:
    """The seed of the search's `index`-th sampled proposal."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class SeededProposals(BaseSampler):
    """A strategy's sampler, seeded per proposal: the i-th proposal a search samples is drawn
    by a sampler seeded with (seed, i), whichever worker or machine asks for it and whenever.
    So a search proposes the same configurations with one worker or several, and a resumed
    search goes on with the proposals the uninterrupted one would have made (ask with
    `ask_next`, which numbers the proposals)."""

    def __init__(self, make: Callable[[int], BaseSampler], seed: int):
        self._make = make
        self._seed = seed
        self.next_proposal = 0
        self._by_trial: dict[int, BaseSampler] = {}
        self._seen = 0  # trials counted so far (a trial's proposal number never changes)
        self._proposals = 0  # proposals among them

    def count_proposals(self, trials: list[FrozenTrial]) -> int:
        """How many of `trials` (the study's, in order) were sampled proposals; only trials not
        seen before are looked at, so asking does not grow with the study."""
        for trial in trials[self._seen :]:
            self._proposals += PROPOSAL_ATTR in trial.user_attrs
        self._seen = len(trials)
        return self._proposals

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        sampler = self._by_trial.get(trial.number)
        if sampler is None:
            sampler = self._make(proposal_seed(self._seed, self.next_proposal))
            self._by_trial[trial.number] = sampler
        return sampler

    def reseed_rng(self) -> None:  # the seeds are the point; nothing to reseed
        pass

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, distribution: BaseDistribution
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, name, distribution)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any
    ) -> None:
        sampler = self._by_trial.pop(trial.number, None)
        if sampler is not None:
            sampler.after_trial(study, trial, state, values)


def ask_next(study: optuna.Study) -> optuna.Trial:
    """The next trial: a queued point when one waits, else the sampler's next proposal,
    numbered among the study's proposals. Callers sharing a study hold its budget lock."""
    sampler = study.sampler
    if not isinstance(sampler, SeededProposals) or study.get_trials(
        deepcopy=False, states=(TrialState.WAITING,)
    ):
        return study.ask()
    sampler.next_proposal = sampler.count_proposals(study.get_trials(deepcopy=False))
    trial = study.ask()
    trial.set_user_attr(PROPOSAL_ATTR, sampler.next_proposal)
    return trial


def make_sampler(search: SearchSpec, seed: int) -> optuna.samplers.BaseSampler:
    """A fresh sampler for the strategy, seeded per proposal. Grid uses the queue; its sampler
    is never consulted. TPE and evolution handle several objectives (TPE as Optuna's MOTPE;
    evolution by non-dominated rank) and steer by the constraint values each trial is told
    with (see study.tell_outcome).

    Both can propose several trials before any of them finishes (a stack, or several
    workers): TPE's constant liar counts the running trials among the worse ones, so the next
    proposal moves away from them instead of landing on the same promising point; evolution
    keeps a child apart from the configurations of running trials."""
    if search.strategy == "tpe":
        # constant_liar is Optuna 5's default too; named so a change of default cannot undo it
        return SeededProposals(
            lambda s: optuna.samplers.TPESampler(seed=s, constant_liar=True), seed
        )
    if search.strategy == "evolution":
        known = KnownConfigurations()  # shared, so a proposal's cost does not grow
        population = search.population
        listed = [Param.listed(e, path) for path, e in search.space.items() if not e.is_range]
        ordered = ordered_choices(listed)
        return SeededProposals(
            lambda s: EvolutionSampler(population, seed=s, known=known, ordered=ordered), seed
        )
    return SeededProposals(lambda s: optuna.samplers.RandomSampler(seed=s), seed)


def make_pruner(search: SearchSpec, epochs: int) -> optuna.pruners.BasePruner:
    """The search's pruner. Each judges a trial against the trials training beside it (its
    stack) as well as finished ones (see `hpsearch.pruners`); hyperband spreads trials over
    brackets whose first rung is 1, 3, 9, ... epochs, up to `epochs`."""
    if search.pruner == "median":
        return PeerMedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if search.pruner == "asha":
        return PeerSuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if search.pruner == "hyperband":
        return PeerHyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


def check_strategy(search: SearchSpec) -> None:
    if search.refine is not None and search.strategy not in ("grid", "random"):
        raise InputError(
            f"search.refine: refinement applies to grid and random, not {search.strategy} "
            "(evolution and tpe already concentrate on promising areas)"
        )
    if search.mode == "panda" and isinstance(search.stack, int) and search.stack > 1:
        raise InputError(
            f"search.stack: panda trains one watched model at a time, so it cannot stack "
            f"{search.stack} trials; use mode: caviar, or leave stack out"
        )


def best_fraction(
    points: list[tuple[dict[str, Any], float]], keep: float, maximize: bool
) -> list[dict[str, Any]]:
    """The params of the best `keep` fraction of (params, value) pairs (at least one), widened
    to every pair tied with the last one kept: a cut through equal values would keep an
    arbitrary part of trials the dev set cannot tell apart."""
    ranked = sorted(points, key=lambda pv: -pv[1] if maximize else pv[1])
    count = max(1, math.ceil(keep * len(ranked)))
    while count < len(ranked) and ranked[count][1] == ranked[count - 1][1]:
        count += 1
    return [params for params, _ in ranked[:count]]


def _to_axis(param: Param, value: float) -> float:
    return math.log10(value) if param.spec.log else float(value)


def _from_axis(param: Param, value: float) -> float:
    return 10**value if param.spec.log else value


def tighten_param(param: Param, best_values: list[Any]) -> Param:
    """Shrink one parameter around the values the best trials used.

    Ranges become the box spanned by those values (on the log axis for log ranges), widened by
    one grid spacing (grid) or a tenth of the current span (random) on each side, because the
    optimum may lie between the points tried, and never wider than the current range.
    Ordered choices (numbers, hidden widths) keep the run of sorted options from the smallest
    to the largest the best trials used, in between included, as a range would; other choices
    keep only the options the best trials used.
    """
    if not best_values:
        return param
    spec = param.spec
    if not param.is_range:
        kept = [v for v in param.options if v in best_values]
        if param.ordered and kept:
            ranked = param.ordered_options
            used = [ranked.index(v) for v in kept]
            between = ranked[min(used) : max(used) + 1]
            kept = [v for v in param.options if v in between]
        key = "choices" if spec.choices is not None else "values"
        return replace(param, spec=spec.model_copy(update={key: kept}))
    low, high = _to_axis(param, spec.low), _to_axis(param, spec.high)
    span = high - low
    margin = span / (spec.steps - 1) if spec.steps else span / 10
    axis = [_to_axis(param, v) for v in best_values]
    new_low = max(low, min(axis) - margin)
    new_high = min(high, max(axis) + margin)
    new_low, new_high = _from_axis(param, new_low), _from_axis(param, new_high)
    if param.kind == "int":
        new_low, new_high = math.floor(new_low), math.ceil(new_high)
        if new_low == new_high:
            new_high = min(int(spec.high), new_low + 1)
            new_low = new_high - 1
    else:
        new_low, new_high = max(new_low, spec.low), min(new_high, spec.high)
    update: dict[str, Any] = {"low": new_low, "high": new_high}
    if spec.steps:  # a denser grid in the smaller box
        update["steps"] = spec.steps + 1
    return replace(param, spec=spec.model_copy(update=update))


def tighten(params: list[Param], best_points: list[dict[str, Any]]) -> list[Param]:
    """The space for the next refine round: every parameter tightened around the best points."""
    return [tighten_param(p, [pt[p.path] for pt in best_points if p.path in pt]) for p in params]


def describe_space(params: list[Param]) -> dict[str, Any]:
    """A JSON-ready description of a (possibly tightened) space, recorded per refine round."""
    return {p.path: p.spec.model_dump(exclude_none=True, exclude_defaults=True) for p in params}


def space_from_description(params: list[Param], description: dict[str, Any]) -> list[Param]:
    """The space `describe_space` recorded, as params again (conditions and kinds from the full
    space `params`): how a resumed run reads back the rounds planned before it stopped."""
    by_path = {p.path: p for p in params}
    space = []
    for path, raw in description.items():
        base = by_path[path]
        spec = ParamSpec.model_validate({**raw, "when": base.spec.when})
        space.append(Param(path, spec, base.kind))
    return space


def refine_points(params: list[Param], count: int, seed: int, spec: Spec | None) -> list[dict]:
    """`count` random points inside a tightened space, drawn with Optuna's RandomSampler.

    A refine round queues these in the study rather than sampling the tightened space there:
    Optuna requires a parameter's choices to stay the same throughout a study, and a tightened
    round keeps only some of them.
    """
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    points = []
    for _ in range(count):
        trial = study.ask()
        points.append(suggest(trial, params, spec))
        study.tell(trial, 0.0)
    return points
