"""The search space: dotted paths into the spec -> Optuna distributions, and applying values.

A log range is sampled as 10**r with r uniform between log10(low) and log10(high) (Optuna's
`log=True` draws uniformly in log space). Choices may be any YAML value; lists (e.g. hidden
widths) travel through Optuna as their JSON text, since its categorical values must be scalars.

Choices (or grid values) that are numbers, or equal-length lists of numbers that grow together
(hidden widths), are *ordered*: `Param.ordered` and `Param.ordered_options` say so once, for
evolution's mutation, refine's tightening and the report's plots alike.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import ValidationError

from hpsearch.errors import InputError
from hpsearch.spec import (
    ParamSpec,
    Spec,
    closest_path,
    describe_validation_error,
    field_paths,
    field_types,
)

# Sizing a model by `hidden` or by `layers` + `units` are exclusive; setting one clears the other.
_EXCLUSIVE = {
    "model.hidden": ("layers", "units"),
    "model.layers": ("hidden",),
    "model.units": ("hidden",),
}
# Paths a search must not change: they define the data and the run, not a trial.
_FIXED_SECTIONS = ("name", "seed", "device", "data", "objective", "search", "storage")
# ...except the data remedies, applied per trial to the loaded data (hpsearch.remedies)
_SEARCHABLE_DATA = ("data.feature_weights.", "data.augment", "data.oversample")


def _fixed(path: str) -> bool:
    if path == "model.init_from":  # resolved to one weights file when the run starts
        return True
    return path.split(".")[0] in _FIXED_SECTIONS and not path.startswith(_SEARCHABLE_DATA)


@dataclass(frozen=True)
class Param:
    """One validated search-space entry."""

    path: str
    spec: ParamSpec
    kind: str  # float | int | categorical

    @property
    def is_range(self) -> bool:
        return self.kind in ("float", "int") and self.spec.values is None

    @property
    def options(self) -> list[Any]:
        """Choices or explicit values, as given."""
        return list(self.spec.choices if self.spec.choices is not None else self.spec.values or [])

    @classmethod
    def listed(cls, spec: ParamSpec, path: str = "") -> Param:
        """A choices or values parameter known by its spec alone (as a run's report reads it):
        its kind matters only to ranges."""
        if spec.is_range:
            raise ValueError(f"{path or 'a range'}: listed() takes choices or values, not a range")
        return cls(path, spec, "categorical")

    @property
    def ordered(self) -> bool:
        """Whether the options have an order a search can step along (see `_order`), unless
        the entry says `ordered: false`."""
        return not self.is_range and self.spec.ordered is not False and bool(_order(self.options))

    @property
    def ordered_options(self) -> list[Any]:
        """The options from smallest to largest when ordered, else as given."""
        return _order(self.options) if self.ordered else self.options

    def distribution(self) -> BaseDistribution:
        s = self.spec
        if not self.is_range:
            return CategoricalDistribution([encode(v) for v in self.options])
        if self.kind == "int":
            return IntDistribution(int(s.low), int(s.high), log=s.log, step=int(s.step or 1))
        return FloatDistribution(s.low, s.high, log=s.log, step=s.step)

    def decode(self, value: Any) -> Any:
        return decode(value) if not self.is_range else value

    def grid_values(self) -> list[Any]:
        """The points a grid visits: values/choices, or `steps` points (log-spaced for log)."""
        s = self.spec
        if not self.is_range:
            return self.options
        if s.steps is None:
            raise InputError(
                f"search.space[{self.path}]: a grid needs `steps: N` or `values: [...]` for a range"
            )
        if s.log:
            points = np.geomspace(s.low, s.high, s.steps)
        else:
            points = np.linspace(s.low, s.high, s.steps)
        if self.kind == "int":
            return sorted({int(round(p)) for p in points})
        return [float(p) for p in points]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _order(options: list[Any]) -> list[Any]:
    """`options` sorted, when they have an order: numbers, or lists of numbers of one length
    that grow together position by position once sorted ([32, 16] < [64, 32]), as hidden widths
    do. Empty when they have none: strings, bools, mixed lists, or widths such as [[64, 32],
    [32, 64]] that no order makes grow everywhere."""
    if all(_is_number(v) for v in options):
        return sorted(options)
    lists = all(isinstance(v, list) and v and all(_is_number(x) for x in v) for v in options)
    if not lists or len({len(v) for v in options}) != 1:
        return []
    ranked = sorted(options)
    for smaller, larger in itertools.pairwise(ranked):
        if any(a > b for a, b in zip(smaller, larger, strict=True)):
            return []
    return ranked


def ordered_choices(params: list[Param]) -> dict[str, list[Any]]:
    """Each ordered parameter's options, smallest first, as Optuna stores them (lists encoded):
    what evolution steps along."""
    return {p.path: [encode(v) for v in p.ordered_options] for p in params if p.ordered}


def encode(value: Any) -> Any:
    """Optuna categorical values must be scalars: lists and dicts travel as JSON text."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def _kind(path: str, param: ParamSpec) -> str:
    types = field_types(path)
    where = f"search.space[{path}]"
    if types is None or _fixed(path):
        close = closest_path(path, searchable_paths())
        hint = f"did you mean {close}?" if close else "e.g. train.lr, model.hidden"
        raise InputError(f"{where}: '{path}' is not a searchable spec field; {hint}")
    numeric = [t for t in types if t in (int, float)]
    if param.is_range:
        if not numeric:
            raise InputError(
                f"{where}: {path} is not numeric; give choices: [...] instead of low/high"
            )
        if float in numeric:
            return "float"
        if not (float(param.low).is_integer() and float(param.high).is_integer()):
            raise InputError(f"{where}: {path} takes whole numbers; low and high must be integers")
        return "int"
    return "float" if param.values is not None and float in numeric else "categorical"


def parse_space(spec: Spec) -> list[Param]:
    """Validate the spec's search space: paths exist, types fit, conditions name real params.

    Every choice is applied to the spec once, so a value the field refuses is reported now,
    not in the middle of a search.
    """
    if spec.search is None:
        return []
    params: list[Param] = []
    for path, param_spec in spec.search.space.items():
        try:
            params.append(_parse_param(spec, path, param_spec))
        except InputError as exc:
            if exc.source is not None:  # already placed (a spec file's own error)
                raise
            raise spec.error_at(("search", "space", path), str(exc)) from None
    return params


def searchable_paths() -> list[str]:
    """The dotted spec fields a search space may name."""
    return [p for p in field_paths(Spec) if "." in p and not _fixed(p)]


def _parse_param(spec: Spec, path: str, param_spec: ParamSpec) -> Param:
    where = f"search.space[{path}]"
    param = _check_ordered(Param(path, param_spec, _kind(path, param_spec)), where)
    for value in param.options:
        _check_value(spec, path, value)
    for condition in param_spec.when or {}:
        if condition == path or field_types(condition) is None:
            raise InputError(
                f"search.space[{path}].when: '{condition}' is not a spec field or another parameter"
            )
    if spec.search is not None and spec.search.strategy == "grid":
        param.grid_values()
    return param


def _check_ordered(param: Param, where: str) -> Param:
    if param.spec.ordered and not param.ordered:
        raise InputError(
            f"{where}: ordered: true needs numbers, or lists of numbers of one "
            "length that grow together (e.g. [[32], [64]]); leave it out for these choices"
        )
    return param


def _check_value(spec: Spec, path: str, value: Any) -> None:
    try:
        apply_params(spec, {path: value})
    except InputError as exc:
        raise InputError(f"search.space[{path}]: choice {value!r} is not valid: {exc}") from None


def condition_holds(param: Param, values: dict[str, Any], spec: Spec | None) -> bool:
    """A `when` condition looks at the value sampled in this trial, else the spec's own value
    (without a spec, as for `hpsearch.minimize`, an unsampled path never matches)."""
    for path, allowed in (param.spec.when or {}).items():
        if path in values:
            current = values[path]
        elif spec is not None:
            current = get_dotted(spec, path)
        else:
            return False
        if current not in allowed:
            return False
    return True


def parse_free_space(space: dict[str, dict[str, Any]]) -> list[Param]:
    """A search space for any objective (no spec fields to check against): ranges whose low and
    high are both integers are integer ranges, other ranges are float ranges."""
    params = []
    for path, raw in space.items():
        try:
            param_spec = ParamSpec.model_validate(raw)
        except ValidationError as exc:
            raise describe_validation_error(exc, "space", {}) from None
        if param_spec.is_range:
            whole = all(
                isinstance(raw[k], int) and not isinstance(raw[k], bool) for k in ("low", "high")
            )
            kind = "int" if whole else "float"
        else:
            values = param_spec.values or []
            numeric = values and all(isinstance(v, float) for v in values)
            kind = "float" if numeric else "categorical"
        params.append(_check_ordered(Param(path, param_spec, kind), f"space[{path}]"))
    return params


def get_dotted(spec: Spec, path: str) -> Any:
    node: Any = spec
    for part in path.split("."):
        node = getattr(node, part)
    return node


def suggest(trial: Any, params: list[Param], spec: Spec | None) -> dict[str, Any]:
    """Ask an Optuna trial for one value per active parameter (conditions checked in order)."""
    values: dict[str, Any] = {}
    for param in params:
        if not condition_holds(param, values, spec):
            continue
        dist = param.distribution()
        if isinstance(dist, CategoricalDistribution):
            raw = trial.suggest_categorical(param.path, dist.choices)
        elif isinstance(dist, IntDistribution):
            raw = trial.suggest_int(param.path, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            raw = trial.suggest_float(param.path, dist.low, dist.high, step=dist.step, log=dist.log)
        values[param.path] = param.decode(raw)
    return values


def grid_points(params: list[Param], spec: Spec | None) -> list[dict[str, Any]]:
    """Every combination of grid values; inactive conditional params dropped, duplicates merged."""
    points: list[dict[str, Any]] = []
    seen: set[str] = set()
    for combo in itertools.product(*(p.grid_values() for p in params)):
        point: dict[str, Any] = {}
        for param, value in zip(params, combo, strict=True):
            if condition_holds(param, point, spec):
                point[param.path] = value
        key = json.dumps(point, sort_keys=True)
        if key not in seen:
            seen.add(key)
            points.append(point)
    return points


def to_optuna_params(params: list[Param], point: dict[str, Any]) -> dict[str, Any]:
    """A point as Optuna stores it (lists encoded), for enqueue_trial."""
    by_path = {p.path: p for p in params}
    return {k: (encode(v) if not by_path[k].is_range else v) for k, v in point.items()}


def decode_params(params: list[Param], stored: dict[str, Any]) -> dict[str, Any]:
    """A trial's params as Optuna stores them -> the values a spec takes (lists decoded).

    A key that is not in the space is kept as stored: nothing a trial recorded is dropped."""
    by_path = {p.path: p for p in params}
    return {k: by_path[k].decode(v) if k in by_path else v for k, v in stored.items()}


def in_range(param: Param, value: Any) -> bool:
    if not param.is_range:
        return value in param.options
    return param.spec.low - 1e-12 <= value <= param.spec.high + 1e-12 and math.isfinite(value)


def set_dotted(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set tree['a']['b'] for path 'a.b', creating missing sections."""
    *parents, leaf = path.split(".")
    node = tree
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[leaf] = value


def apply_params(spec: Spec, params: dict[str, Any]) -> Spec:
    """A copy of `spec` with each dotted path in `params` overridden, validated again."""
    if not params:
        return spec
    tree = copy.deepcopy(spec.model_dump(mode="json", exclude={"search"}))
    for path, value in params.items():
        section = path.split(".")[0]
        for other in _EXCLUSIVE.get(path, ()):
            tree.get(section, {}).pop(other, None)
        set_dotted(tree, path, value)
    try:
        return Spec.model_validate({**tree, "search": spec.search})
    except ValidationError as exc:
        raise describe_validation_error(exc, "search.space", {}) from None
