"""Search strategies: the search section -> an Optuna sampler, plus pure refine (tightening).

The strategy proposes, the engine evaluates. Grid points are handed to workers through Optuna's
queue of waiting trials (each popped once), so no point runs twice; the others are stock
samplers seeded from the spec (evolution is our own, in `hpsearch.evolution`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import optuna

from hpsearch.errors import InputError
from hpsearch.evolution import EvolutionSampler
from hpsearch.space import Param, suggest
from hpsearch.spec import ParamSpec, SearchSpec, Spec


def make_sampler(search: SearchSpec, seed: int) -> optuna.samplers.BaseSampler:
    """A fresh sampler for the strategy. Grid uses the queue; its sampler is never consulted."""
    if search.strategy == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if search.strategy == "evolution":
        return EvolutionSampler(population=search.population, seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(search: SearchSpec) -> optuna.pruners.BasePruner:
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if search.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
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
    """The params of the best `keep` fraction of (params, value) pairs (at least one)."""
    ranked = sorted(points, key=lambda pv: -pv[1] if maximize else pv[1])
    count = max(1, math.ceil(keep * len(ranked)))
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
    Choices keep only the options the best trials used.
    """
    if not best_values:
        return param
    spec = param.spec
    if not param.is_range:
        kept = [v for v in param.options if v in best_values]
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
