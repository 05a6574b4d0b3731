"""The spec: pydantic models of the YAML file, and loading it with key-path error messages.

Base layer: no torch, no optuna. Everything that reads a spec file goes through `load_spec`.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from hpsearch.errors import InputError

DATASET_PREFIXES = ("sklearn:", "synthetic:")
Path_ = tuple[str | int, ...]  # a key path into the YAML document: ("search", "space", "train.lr")
SKLEARN_DATASETS = ("iris", "wine", "breast_cancer", "digits", "diabetes")
SYNTHETIC_KINDS = ("classification", "regression")
DEFAULT_HIDDEN = [64, 64]

# Metrics a trial can be judged by; each is computed on the dev split every epoch.
CLASSIFICATION_METRICS = ("loss", "error", "accuracy", "precision", "recall", "f1")
REGRESSION_METRICS = ("loss", "error", "mse", "mae", "r2")
MAXIMIZED_METRICS = ("accuracy", "precision", "recall", "f1", "r2")
# What a trained model costs, measured after training when the objective names one: its
# trainable parameters, its training's wall time, and milliseconds per 1,000 rows predicted.
COST_METRICS = ("n_params", "train_seconds", "inference_ms")
ObjectiveMetric = Literal[
    "dev_loss",
    "dev_error",
    "dev_accuracy",
    "dev_precision",
    "dev_recall",
    "dev_f1",
    "dev_mse",
    "dev_mae",
    "dev_r2",
    "n_params",
    "train_seconds",
    "inference_ms",
]


# Counts are whole numbers given as numbers (YAML's `true` is not 1) and stay within what
# torch, numpy and the operating system can hold; sizes beyond these are typos, not plans.
MAX_COUNT = 2**31 - 1
PositiveInt = Annotated[int, Field(gt=0, le=MAX_COUNT, strict=True)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT, strict=True)]
MAX_WORKERS = 1024


class Strict(BaseModel):
    """Every spec section rejects unknown keys, and infinite or NaN numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# --- data -------------------------------------------------------------------------------------


class SplitRatios(Strict):
    train: float = Field(gt=0, lt=1)
    dev: float = Field(gt=0, lt=1)
    test: float = Field(ge=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitRatios:
        total = self.train + self.dev + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + dev + test must sum to 1 (got {total:g})")
        return self


class SplitColumn(Strict):
    """A predefined split: a column whose values are train, dev or test for each row."""

    column: str


class SyntheticOptions(Strict):
    """Size of a `synthetic:` data set (scikit-learn's make_classification / make_regression)."""

    # generated in memory: a million rows of ten thousand features is already 80 GB
    samples: int = Field(1000, gt=0, le=1_000_000, strict=True)
    features: int = Field(20, gt=0, le=10_000, strict=True)
    informative: PositiveInt = 10
    classes: int = Field(2, ge=2, le=1000, strict=True)
    noise: NonNegativeFloat = 0.0  # label noise fraction (classification) or target noise std

    @model_validator(mode="after")
    def _informative_fits(self) -> SyntheticOptions:
        if self.informative > self.features:
            raise ValueError("informative must be <= features")
        return self


class ColumnWeights(Strict):
    column: str


class GroupWeights(Strict):
    group: dict[str, PositiveFloat]


def _string_keys(value: Any) -> Any:
    """YAML reads a class or column named 0 as the number 0; names are strings here."""
    if isinstance(value, dict):
        return {str(key) if isinstance(key, int | float) else key: v for key, v in value.items()}
    return value


StrengthFactor = Annotated[float, Field(ge=0, le=1e6)]


class AugmentSpec(Strict):
    """Augmentation of the train split's batches (never dev or test)."""

    # Gaussian noise added to numeric inputs, in units of each feature's train standard
    # deviation (standardized units under normalize: standard); one-hot indicators stay exact
    noise: float = Field(0.0, ge=0, le=100)


OVERSAMPLE_KEYS = ("method", "classes", "k_neighbors")


class OversampleSpec(Strict):
    """Rebalancing of the train split by oversampling (classification only).

    `classes: minority` raises every class to the size of the largest one; `{CLASS: f}`
    multiplies that class's train rows by f (>= 1; 1.5 adds half as many again). `random`
    repeats randomly chosen rows; `smote` interpolates new rows between a row and one of its
    `k_neighbors` nearest neighbours of the same class (imbalanced-learn's SMOTE)."""

    method: Literal["random", "smote"] = "random"
    classes: Literal["minority"] | dict[str, Annotated[float, Field(ge=1, le=1000)]] = "minority"
    k_neighbors: int = Field(5, ge=1, le=1000, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `oversample: minority` and `oversample: {CLASS: factor}` are the short forms
        if isinstance(value, str):
            return {"classes": value}
        if isinstance(value, dict) and value and not set(map(str, value)) & set(OVERSAMPLE_KEYS):
            return {"classes": value}
        return value

    @field_validator("classes", mode="before")
    @classmethod
    def _class_names(cls, value: Any) -> Any:
        return _string_keys(value)


class DataSpec(Strict):
    source: str
    target: str | None = None
    task: Literal["auto", "binary", "multiclass", "regression"] = "auto"
    drop: list[str] = []
    impute: Literal["mean", "median", "most_frequent"] | None = None
    normalize: Literal["none", "standard", "minmax"] = "standard"
    split: Literal["auto"] | SplitRatios | SplitColumn = "auto"
    group: str | None = None
    weights: Literal["balanced"] | ColumnWeights | GroupWeights | None = None
    synthetic: SyntheticOptions = SyntheticOptions()
    feature_weights: dict[str, StrengthFactor] = {}
    augment: AugmentSpec | None = None
    oversample: OversampleSpec | None = None

    @field_validator("feature_weights", mode="before")
    @classmethod
    def _column_names(cls, value: Any) -> Any:
        return _string_keys(value)

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value.startswith("sklearn:"):
            name = value.removeprefix("sklearn:")
            if name not in SKLEARN_DATASETS:
                raise ValueError(
                    f"unknown bundled data set '{name}'; allowed: {_alts(SKLEARN_DATASETS)}"
                )
        elif value.startswith("synthetic:"):
            kind = value.removeprefix("synthetic:")
            if kind not in SYNTHETIC_KINDS:
                raise ValueError(
                    f"unknown synthetic kind '{kind}'; allowed: {_alts(SYNTHETIC_KINDS)}"
                )
        elif Path(value).suffix.lower() not in (".csv", ".parquet", ".npz"):
            raise ValueError(
                "must be sklearn:<name>, synthetic:classification|regression "
                "or a .csv, .parquet or .npz file"
            )
        return value

    @property
    def is_file(self) -> bool:
        return not self.source.startswith(DATASET_PREFIXES)


# --- model and training -----------------------------------------------------------------------


class ModelSpec(Strict):
    hidden: list[PositiveInt] | None = None
    layers: Count | None = None
    units: PositiveInt | None = None
    activation: Literal["relu", "leaky_relu", "tanh", "sigmoid", "gelu", "elu", "selu"] = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    init: Literal[
        "xavier_uniform",
        "xavier_normal",
        "kaiming_uniform",
        "kaiming_normal",
        "orthogonal",
        "default",
    ] = "xavier_uniform"
    norm: Literal["none", "batch", "layer"] = "none"
    residual: bool = False
    # RUN | RUN/trials/N | latest | file.pt: start from an earlier model's matching layers
    init_from: str | None = Field(None, min_length=1)
    freeze: Count = 0  # the first K hidden layers keep their starting weights

    @model_validator(mode="after")
    def _one_way_to_size(self) -> ModelSpec:
        if self.hidden is not None and (self.layers is not None or self.units is not None):
            raise ValueError("give either hidden: [..] or layers + units, not both")
        if (self.layers is None) != (self.units is None):
            raise ValueError("layers and units go together")
        if self.freeze > len(self.widths):
            raise ValueError(
                f"freeze: {self.freeze} hidden layers, but the model has {len(self.widths)}"
            )
        return self

    @property
    def widths(self) -> list[int]:
        """Hidden layer widths, whichever way the spec gave them."""
        if self.hidden is not None:
            return list(self.hidden)
        if self.layers is not None and self.units is not None:
            return [self.units] * self.layers
        return list(DEFAULT_HIDDEN)


class EarlyStopping(Strict):
    patience: PositiveInt = 10
    min_delta: NonNegativeFloat = 0.0


class TrainSpec(Strict):
    loss: Literal["auto", "cross_entropy", "bce", "mse", "l2", "l1", "huber"] = "auto"
    optimizer: Literal["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw"] = "adam"
    lr: PositiveFloat = 1e-3
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: PositiveInt = 64
    epochs: PositiveInt = 100
    l1: NonNegativeFloat = 0.0
    l2: NonNegativeFloat = 0.0
    grad_clip: PositiveFloat | None = None
    lr_schedule: Literal["none", "step", "cosine", "exponential"] = "none"
    early_stopping: EarlyStopping | None = EarlyStopping()


Direction = Literal["minimize", "maximize"]
_BOUND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*(\S+)\s*$")


def default_direction(metric: str) -> str:
    return "maximize" if metric.removeprefix("dev_") in MAXIMIZED_METRICS else "minimize"


class Bound(BaseModel):
    """One constraint, `metric <= limit` or `metric >= limit`, on a trial's final metrics."""

    metric: str
    op: Literal["<=", ">="]
    limit: float

    def violation(self, metrics: dict[str, float]) -> float:
        """How far a trial is outside the bound (<= 0: inside); a missing metric is outside."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return math.inf
        return value - self.limit if self.op == "<=" else self.limit - value

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.limit:g}"


class Pick(Strict):
    """Which trial of the Pareto front is scored on test and diagnosed: `knee` (the front's
    trial nearest the ideal point once each objective is scaled to 0..1 over the front), or
    the best by `best` (default: the first objective) among front trials within `max` / `min`
    bounds, e.g. {max: {n_params: 100000}}."""

    best: ObjectiveMetric | None = None
    max: dict[str, float] = Field(default_factory=dict)
    min: dict[str, float] = Field(default_factory=dict)

    @property
    def bounds(self) -> list[Bound]:
        return [Bound(metric=m, op="<=", limit=v) for m, v in self.max.items()] + [
            Bound(metric=m, op=">=", limit=v) for m, v in self.min.items()
        ]


class ObjectiveSpec(Strict):
    """One objective (`metric`, `direction`) or several (`metrics`, `directions`): a search
    over several finds their Pareto front and scores the trial that `pick` names."""

    metric: ObjectiveMetric = "dev_error"
    direction: Direction | None = None
    metrics: list[ObjectiveMetric] | None = Field(None, min_length=2)
    directions: list[Direction] | None = None
    pick: Literal["knee"] | Pick = "knee"
    # "n_params <= 1e5": trials outside are infeasible (samplers steer away; never picked)
    constraints: list[str] = Field(default_factory=list)

    @field_validator("pick", mode="before")
    @classmethod
    def _a_known_rule(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "knee":
            raise ValueError(
                f"'{value}' is not a pick rule: use knee, or bounds such as "
                "{max: {n_params: 100000}} (with best: METRIC)"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _first_metric_is_the_metric(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("metrics"), list) and raw["metrics"]:
            first = raw["metrics"][0]
            # a written-out spec repeats the first metric as `metric`; anything else is a clash
            if raw.get("metric", first) != first or raw.get("direction") is not None:
                raise ValueError(
                    "give metric (and direction) for one objective, or metrics (and "
                    "directions) for several, not both"
                )
            raw = {**raw, "metric": first}
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> ObjectiveSpec:
        if self.metrics is not None:
            if len(set(self.metrics)) != len(self.metrics):
                raise ValueError("metrics: each metric once")
            if self.directions is not None and len(self.directions) != len(self.metrics):
                raise ValueError(
                    f"directions: {len(self.directions)} given for {len(self.metrics)} metrics"
                )
        elif self.directions is not None:
            raise ValueError("directions go with metrics (a list); for one metric: direction")
        if self.pick != "knee" and self.metrics is None:
            raise ValueError("pick chooses among several objectives; give metrics: [...]")
        self.bounds  # noqa: B018  (parses every constraint now, so a typo is a spec error)
        return self

    @property
    def names(self) -> list[str]:
        """The objective metrics, in order (one for a single objective)."""
        return list(self.metrics) if self.metrics is not None else [self.metric]

    @property
    def resolved_directions(self) -> list[str]:
        if self.directions is not None:
            return list(self.directions)
        if self.metrics is None and self.direction:
            return [self.direction]
        return [default_direction(m) for m in self.names]

    @property
    def resolved_direction(self) -> str:
        """The (first) objective's direction."""
        return self.resolved_directions[0]

    @property
    def several(self) -> bool:
        return self.metrics is not None

    @property
    def bounds(self) -> list[Bound]:
        bounds = []
        for text in self.constraints:
            match = _BOUND.match(text)
            limit = None
            if match:
                with contextlib.suppress(ValueError):
                    limit = float(match.group(3))
            if match is None or limit is None or not math.isfinite(limit):
                raise ValueError(
                    f"constraints: '{text}' is not 'METRIC <= NUMBER' or 'METRIC >= NUMBER' "
                    "(e.g. 'n_params <= 1e5')"
                )
            bounds.append(Bound(metric=match.group(1), op=match.group(2), limit=limit))
        return bounds

    @property
    def named_metrics(self) -> set[str]:
        """Every metric the objective, its constraints and its pick rule read."""
        named = set(self.names) | {b.metric for b in self.bounds}
        if isinstance(self.pick, Pick):
            named |= {b.metric for b in self.pick.bounds}
            named |= {self.pick.best} if self.pick.best else set()
        return named

    @property
    def costs(self) -> set[str]:
        """The cost metrics (COST_METRICS) the trials must measure."""
        return self.named_metrics & set(COST_METRICS)


# --- search -----------------------------------------------------------------------------------


class ParamSpec(Strict):
    """One search-space entry: a range (low/high), a choice list, or explicit grid values."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: PositiveFloat | None = None
    steps: int | None = Field(None, ge=2, le=MAX_COUNT, strict=True)
    values: list[Any] | None = Field(None, min_length=1)
    choices: list[Any] | None = Field(None, min_length=1)
    # None: numbers (and width lists) are searched in order; false: as unrelated options
    ordered: bool | None = None
    when: dict[str, list[Any]] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpec:
        is_range = self.low is not None or self.high is not None
        kinds = [is_range, self.choices is not None, self.values is not None]
        if sum(kinds) != 1:
            raise ValueError("give exactly one of low + high, choices: [..] or values: [..]")
        if is_range:
            if self.low is None or self.high is None:
                raise ValueError("a range needs both low and high")
            if not self.low < self.high:
                raise ValueError(
                    f"low must be below high (got low={self.low:g}, high={self.high:g})"
                )
            if self.log and self.low <= 0:
                raise ValueError(f"a log range needs low > 0 (got low={self.low:g})")
            if self.ordered is not None:
                raise ValueError(
                    "ordered applies only to choices: [..] and values: [..]; a range is ordered"
                )
        elif self.log or self.step is not None or self.steps is not None:
            raise ValueError("log, step and steps apply only to low/high ranges")
        return self

    @property
    def is_range(self) -> bool:
        return self.low is not None


class Refine(Strict):
    rounds: PositiveInt = 2
    keep: float = Field(0.25, gt=0, lt=1)


class Rerank(Strict):
    """Re-train the `top` configurations with `seeds` more seeds each and rank by the mean."""

    top: int = Field(5, ge=2, le=MAX_COUNT, strict=True)
    seeds: int = Field(3, ge=1, le=MAX_COUNT, strict=True)


class PandaOptions(Strict):
    rescue: bool = False
    interactive: bool = False


class SearchSpec(Strict):
    strategy: Literal["grid", "random", "evolution", "tpe"] = "random"
    mode: Literal["caviar", "panda"] = "caviar"
    workers: Literal["auto"] | Annotated[int, Field(gt=0, le=MAX_WORKERS, strict=True)] = "auto"
    trials: PositiveInt | None = None  # None: 40, or every point for grid
    timeout: str | None = None
    refine: Refine | None = None
    population: int = Field(16, ge=2, le=MAX_COUNT, strict=True)
    pruner: Literal["none", "median", "asha", "hyperband"] = "none"
    stack: Literal["auto", "off"] | PositiveInt = "auto"
    panda: PandaOptions = PandaOptions()
    rerank: Rerank | None = None
    space: dict[str, ParamSpec] = Field(default_factory=dict, validate_default=True)

    @field_validator("space")
    @classmethod
    def _something_to_search(cls, value: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
        # every configuration would be the same one, trained with the same seed
        if not value:
            raise ValueError(
                "a search needs at least one parameter, e.g. train.lr: {low: 1.0e-4, high: "
                "0.1, log: true}; to train one model, leave out the search section"
            )
        return value

    @field_validator("stack", mode="before")
    @classmethod
    def _off_is_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false
        return "off" if value is False else value

    @field_validator("timeout")
    @classmethod
    def _timeout_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


# --- the whole spec ---------------------------------------------------------------------------


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class TrackingSpec(Strict):
    """`tracking: {mlflow: URI}`: also log every trial to MLflow (the `mlflow` extra).

    The URI is MLflow's own (`sqlite:///mlflow.db`, `http://host:5000`, ...); a relative path
    in it is relative to the current directory, as MLflow and SQLAlchemy read it (like
    `storage:`), not to the spec file. `mlflow: null` or `""`: MLflow's default,
    $MLFLOW_TRACKING_URI if set, else `sqlite:///mlflow.db` in the current directory, where a
    plain `mlflow ui` finds it (see hpsearch.tracking).
    """

    mlflow: str | None = None


class Spec(Strict):
    name: str
    seed: int = Field(0, ge=0, le=2**32 - 1, strict=True)  # what torch and numpy accept
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+)$")
    data: DataSpec
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    objective: ObjectiveSpec = ObjectiveSpec()
    human_level_error: float | None = Field(None, ge=0, le=1)
    bayes_error: float | None = Field(None, ge=0, le=1)
    search: SearchSpec | None = None
    storage: str | None = None
    tracking: TrackingSpec | None = None
    # where the spec was read from, for errors found after validation (e.g. in the space)
    _source: str | None = PrivateAttr(None)
    _lines: dict[Path_, int] = PrivateAttr(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name_fits_folders(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(
                "a name becomes part of the run folder's name: use letters, digits and . _ - "
                f"(no spaces; at most 100, starting with a letter or digit), e.g. "
                f"'{_suggest_name(value)}'"
            )
        return value

    def error_at(self, loc: Path_, message: str) -> InputError:
        """An input error about the spec at key path `loc`, with the file and YAML line it
        was read from (the nearest enclosing key that has one)."""
        line = next(
            (self._lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in self._lines), None
        )
        return InputError(message, source=self._source, line=line)

    def __eq__(self, other: object) -> bool:
        # two specs are equal by their fields, wherever they were read from
        return type(other) is type(self) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, like every pydantic model

    def located_like(self, other: Spec) -> Spec:
        """This spec, reporting errors at `other`'s file and lines (after CLI overrides)."""
        self._source, self._lines = other._source, other._lines
        return self

    @model_validator(mode="after")
    def _bayes_below_human(self) -> Spec:
        if (
            self.bayes_error is not None
            and self.human_level_error is not None
            and self.bayes_error > self.human_level_error
        ):
            raise ValueError("bayes_error cannot exceed human_level_error")
        return self


def check_objective_fits_search(spec: Spec) -> None:
    """What a search cannot do with the objective: rank by one value (pruner, refine, rerank)
    when there are several, or stack trials it times for train_seconds. An input error at
    the search key, with its YAML line."""
    objective, search = spec.objective, spec.search
    if search is None:
        return
    if objective.several:
        for key, unset in (("pruner", "none"), ("refine", None), ("rerank", None)):
            if getattr(search, key) != unset:
                raise spec.error_at(
                    ("search", key),
                    f"search.{key}: it ranks trials by one objective; with several objectives "
                    f"({', '.join(objective.names)}) leave search.{key} out",
                )
    stacked = isinstance(search.stack, int) and search.stack > 1
    if stacked and "train_seconds" in objective.named_metrics:
        raise spec.error_at(
            ("search", "stack"),
            "search.stack: train_seconds times each trial's own training, which a stack "
            "shares; leave stack out (trials then train one at a time)",
        )


def _suggest_name(value: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", value.strip()).strip("-._")[:100]
    return cleaned or "my-run"


def field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted path of a leaf field under `model` ('train.lr', 'train.early_stopping.
    patience'), for suggestions when a path is misspelled."""
    paths = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = [
            t for t in _unwrap(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        paths.append(path)
        for sub in nested:
            paths.extend(field_paths(sub, f"{path}."))
    return paths


def closest_path(path: str, candidates: list[str]) -> str | None:
    """The candidate a misspelled dotted path most likely meant ('train.learning_rate' ->
    'train.lr'): the best close match of the whole path, else of its last part."""
    head, _, leaf = path.rpartition(".")
    # common synonyms the spelling alone does not reach
    synonyms = {"learning_rate": "lr", "weight_decay": "l2", "width": "hidden"}
    if f"{head}.{synonyms.get(leaf)}" in candidates:
        return f"{head}.{synonyms[leaf]}"
    close = difflib.get_close_matches(path, candidates, n=1, cutoff=0.75)
    if close:
        return close[0]
    leaves = {c.rpartition(".")[2]: c for c in candidates if c.rpartition(".")[0] == head}
    close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
    return leaves[close[0]] if close else None


# --- durations --------------------------------------------------------------------------------

_DURATION = re.compile(
    r"^\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*$"
)


def parse_duration(text: str | float | int) -> float:
    """Seconds in '90', '90s', '30m', '2h', '1h30m'."""
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match or not any(match.groups()):
            raise ValueError(f"'{text}' is not a duration; use e.g. 90s, 30m, 2h or 1h30m")
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if seconds <= 0:
        raise ValueError(f"a duration must be positive (got {text})")
    return seconds


# --- YAML loading with line numbers -----------------------------------------------------------


MAX_DEPTH = 64  # nesting a spec never needs; deeper is hostile or broken input


class SpecLoader(yaml.SafeLoader):
    """Safe YAML loader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`), and
    refuses what a spec never needs and an attacker would use: aliases (`*name`, whose nested
    reuse can expand a few lines into gigabytes) and nesting beyond MAX_DEPTH levels."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a spec; write the value out", mark
            )
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


SpecLoader.yaml_implicit_resolvers = {
    key: list(value) for key, value in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _key_lines(node: yaml.Node, path: Path_, lines: dict[Path_, int], source: str) -> None:
    """Record the line of every key path, and reject duplicate keys (safe_load keeps the last)."""
    if isinstance(node, yaml.MappingNode):
        first_seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            if key in first_seen:
                raise InputError(
                    f"duplicate key '{format_path((*path, key))}' (first given on line "
                    f"{first_seen[key]}); give each key once",
                    source=source,
                    line=line,
                )
            first_seen[key] = line
            lines[(*path, key)] = line
            _key_lines(value_node, (*path, key), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _key_lines(item, (*path, index), lines, source)


def parse_yaml(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML safely, returning the document and a map of key path -> line number."""
    loader = None
    try:
        loader = SpecLoader(text)
        node = loader.get_single_node()
        lines: dict[Path_, int] = {}
        if node is None:
            return None, lines
        _key_lines(node, (), lines, source)
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        if "constructor for the tag" in problem:
            problem = f"tags like {exc.problem.split()[-1] if exc.problem else ''} are not allowed"
        raise InputError(
            f"YAML error: {problem}", source=source, line=mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as exc:
        raise InputError(f"YAML error: {exc}", source=source) from None
    finally:
        if loader is not None:
            loader.dispose()


def format_path(loc: Path_) -> str:
    """('search', 'space', 'train.lr', 'low') -> search.space[train.lr].low"""
    out = ""
    for part in loc:
        if isinstance(part, int) or "." in part:
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _model_at(loc: Path_) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at `loc`, following annotations."""
    model: Any = Spec
    for part in loc:
        annotation = _field_annotation(model, part)
        if annotation is None:
            return None
        model = annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field_annotation(model: Any, part: str | int) -> Any:
    """Follow one step of a key path through a model field, a dict value or a list item."""
    candidates = _unwrap(model)
    for candidate in candidates:
        is_model = isinstance(candidate, type) and issubclass(candidate, BaseModel)
        if is_model and isinstance(part, str) and part in candidate.model_fields:
            return candidate.model_fields[part].annotation
        origin = typing.get_origin(candidate)
        if origin is dict and isinstance(part, str):
            return typing.get_args(candidate)[1]
        if origin is list and isinstance(part, int):
            return typing.get_args(candidate)[0]
    return None


def _unwrap(annotation: Any) -> list[Any]:
    """The alternatives of a union, with Annotated[...] constraints stripped."""
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return [a for arg in typing.get_args(annotation) for a in _unwrap(arg)]
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    return [annotation]


def field_types(path: str) -> list[Any] | None:
    """The types a dotted spec path (e.g. 'train.lr') accepts, or None when no such field."""
    annotation: Any = Spec
    for part in path.split("."):
        annotation = _field_annotation(annotation, part)
        if annotation is None:
            return None
    return _unwrap(annotation)


def _clean_loc(loc: tuple[Any, ...]) -> Path_:
    """Drop pydantic's union-branch labels (e.g. 'literal['auto']', 'SplitRatios') from a loc."""
    cleaned: list[str | int] = []
    for part in loc:
        # field names never hold '[' or '-'; pydantic's branch labels do ('constrained-int')
        if isinstance(part, str) and (
            "[" in part
            or "-" in part
            or (part[:1].isupper() and _field_annotation(Spec, part) is None)
        ):
            continue
        cleaned.append(part)
    return tuple(cleaned)


def _alts(options: typing.Iterable[Any]) -> str:
    return ", ".join(str(o) for o in options)


def _describe(error: dict[str, Any], loc: Path_) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        # a top-level key that looks like a pydantic label ('A') is cleaned out of `loc`
        key = loc[-1] if loc else error["loc"][-1]
        parent = _model_at(loc[:-1])
        allowed = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        known = f" (allowed: {_alts(allowed)})" if allowed else ""
        return f"unknown key '{key}'{hint}{known}"
    if kind == "missing":
        return "is required"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, str | int | float | bool) and "(got" not in message:
        message += f" (got {value!r})"
    return message


def describe_validation_error(
    exc: ValidationError, source: str, lines: dict[Path_, int]
) -> InputError:
    """One readable message from a pydantic error: key path, YAML line, what is allowed."""
    errors = exc.errors()
    # A value that fails every branch of a union (e.g. split: 'auto' | {train, dev, test}) also
    # reports "should be 'auto'"; keep only the more specific branch's complaint.
    specific = {
        _clean_loc(e["loc"])
        for e in errors
        if e["type"] != "literal_error" and any(_is_model_label(p) for p in e["loc"])
    }
    by_loc: dict[Path_, list[str]] = {}
    for error in errors:
        loc = _clean_loc(error["loc"])
        if error["type"] == "literal_error" and loc in specific and len(error["loc"]) > len(loc):
            continue
        text = _describe(error, loc)
        if text not in by_loc.setdefault(loc, []):
            by_loc[loc].append(text)
    messages: list[tuple[int | None, str]] = []
    for loc, texts in by_loc.items():
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
        messages.append((line, f"{format_path(loc)}: {_either(texts)}"))
    messages.sort(key=lambda item: item[0] or 0)
    first_line = messages[0][0] if messages else None
    body = "\n  ".join(f"line {ln}: {text}" if ln else text for ln, text in messages)
    if len(messages) == 1:
        return InputError(messages[0][1], source=source, line=first_line)
    return InputError(f"invalid spec ({len(messages)} problems):\n  {body}", source=source)


def _is_model_label(part: Any) -> bool:
    """A union branch that is a model (SplitRatios, GroupWeights…), not a scalar constraint."""
    if not isinstance(part, str):
        return False
    # 'SplitRatios', or a validator around one: 'function-after[_sums_to_one(), SplitRatios]'
    return (part[:1].isupper() and "-" not in part) or bool(re.search(r", [A-Z]\w*\]$", part))


def _either(texts: list[str]) -> str:
    """Several branches of one union refused a value: one sentence with every alternative."""
    if len(texts) == 1:
        return texts[0]
    got = re.search(r" \(got .*\)$", texts[0])
    bare = [re.sub(r" \(got .*\)$", "", t).removeprefix("Input should be ") for t in texts]
    return "should be " + ", or ".join(bare) + (got.group(0) if got else "")


def spec_from_dict(raw: Any, source: str = "spec", lines: dict[Path_, int] | None = None) -> Spec:
    if not isinstance(raw, dict):
        raise InputError("the spec must be a YAML mapping (key: value lines)", source=source)
    try:
        return Spec.model_validate(raw)
    except ValidationError as exc:
        raise describe_validation_error(exc, source, lines or {}) from None


def load_spec(path: str | Path) -> Spec:
    """Read, parse and validate a spec file. Data file paths become absolute (relative to it)."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("spec file not found", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read spec file: {exc}", source=source) from None
    if "\x00" in text:
        raise InputError("spec file contains NUL bytes", source=source)
    raw, lines = parse_yaml(text, source)
    if raw is None:
        raise InputError("the spec file is empty", source=source)
    if isinstance(raw, dict) and isinstance(raw.get("data"), dict):
        data_source = raw["data"].get("source")
        if isinstance(data_source, str) and not data_source.startswith(DATASET_PREFIXES):
            # absolute, not resolved: a symlink loop is the loader's to report, by name
            raw["data"]["source"] = os.path.abspath(path.parent / data_source)
        model = raw.get("model")
        named = model.get("init_from") if isinstance(model, dict) else None
        if isinstance(named, str) and named.endswith(".pt"):  # a file, like the data's
            raw["model"]["init_from"] = os.path.abspath(path.parent / named)
    spec = spec_from_dict(raw, source, lines)
    spec._source, spec._lines = source, lines
    return spec


def spec_to_yaml(spec: Spec) -> str:
    """The resolved spec as YAML (every default filled in), as written to a run folder."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


def check_resume_compatible(old: Spec, new: Spec) -> list[str]:
    """Refuse spec changes that make a stopped run's trials meaningless (an input error naming
    each); return warnings for benign ones (a range widened or narrowed)."""
    problems, warnings = [], []
    if old.objective != new.objective:
        problems.append("the objective (its metrics, directions, constraints or pick rule) changed")
    if old.search is None or new.search is None:
        problems.append("the search section was added or removed")
    else:
        if old.search.strategy != new.search.strategy:
            problems.append(
                f"the strategy changed ({old.search.strategy} -> {new.search.strategy})"
            )
        for path, before in old.search.space.items():
            after = new.search.space.get(path)
            if after is None:
                problems.append(f"search.space[{path}] was removed")
            elif before.choices != after.choices or before.values != after.values:
                problems.append(f"search.space[{path}]: the choices changed")
            elif before.log != after.log:
                problems.append(f"search.space[{path}]: the log flag changed")
            elif before.is_range and (after.low < before.low or after.high > before.high):
                warnings.append(f"search.space[{path}] widened; earlier trials stay as they were")
            elif before.is_range and (after.low > before.low or after.high < before.high):
                warnings.append(f"search.space[{path}] narrowed")
        for path in new.search.space.keys() - old.search.space.keys():
            problems.append(f"search.space[{path}] was added")
    if old.data != new.data:
        problems.append("the data section changed")
    if problems:
        raise InputError("cannot resume: " + "; ".join(problems) + ". Start a new run instead.")
    return warnings


# --- the spec against its task (known once the data is loaded) -------------------------------


CLASSIFICATION_LOSSES = ("cross_entropy", "bce", "mse", "l2", "l1", "huber")
REGRESSION_LOSSES = ("mse", "l2", "l1", "huber")


def resolve_loss(loss: str, task: str) -> str:
    """The loss a spec means for a task: auto -> bce / cross_entropy / mse."""
    if loss == "auto":
        return {"binary": "bce", "multiclass": "cross_entropy", "regression": "mse"}[task]
    allowed = REGRESSION_LOSSES if task == "regression" else CLASSIFICATION_LOSSES
    if loss not in allowed:
        raise InputError(
            f"train.loss: '{loss}' does not fit a {task} task; allowed: {', '.join(allowed)}"
        )
    return loss


def check_objective_metric(metric: str, task: str, key: str = "objective.metric") -> None:
    allowed = allowed_metrics(task)
    if metric not in COST_METRICS and metric.removeprefix("dev_") not in allowed:
        options = ", ".join([*(f"dev_{m}" for m in allowed), *COST_METRICS])
        raise InputError(f"{key}: '{metric}' does not fit a {task} task; allowed: {options}")


def check_objective(objective: ObjectiveSpec, task: str) -> None:
    """Every metric the objective names (its metrics, constraints and pick rule) is one a
    trial of this task records: dev_* metrics of the task, train_* ones, or a cost."""
    key = "objective.metrics" if objective.several else "objective.metric"
    for name in objective.names:
        check_objective_metric(name, task, key)
    named = [(f"objective.constraints: {b}", b.metric) for b in objective.bounds]
    if isinstance(objective.pick, Pick):
        named += [(f"objective.pick: {b}", b.metric) for b in objective.pick.bounds]
        if objective.pick.best:
            named.append(("objective.pick.best", objective.pick.best))
    for where, metric in named:
        split, _, base = metric.partition("_")
        if metric in COST_METRICS or (split in ("dev", "train") and base in allowed_metrics(task)):
            continue
        options = ", ".join(
            [*(f"{s}_{m}" for s in ("dev", "train") for m in allowed_metrics(task)), *COST_METRICS]
        )
        raise InputError(f"{where}: no trial metric '{metric}'; metrics: {options}")


def allowed_metrics(task: str) -> tuple[str, ...]:
    return REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS
