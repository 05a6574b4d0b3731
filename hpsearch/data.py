"""Load, check, encode, split and weight the data a spec names (numpy, pandas, sklearn; no torch).

One entry point, `load_dataset`. Every statistic (imputation values, one-hot categories, scaling,
the regression target's mean and std, balanced class weights) is learned from the train split
only, so nothing leaks from dev or test. Every problem with the user's data is an `InputError`
naming the spec key or column.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import math
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from hpsearch.errors import InputError
from hpsearch.spec import (
    ColumnWeights,
    DataSpec,
    GroupWeights,
    SplitColumn,
    SplitRatios,
    SyntheticOptions,
)

SPLITS = ("train", "dev", "test")
AUTO_SPLIT_ROWS = 100_000  # at or above this many rows, split: auto means 98/1/1
MAX_INTEGER_CLASSES = 20  # an integer target with more distinct values is inferred as regression
MAX_CATEGORIES = 1000  # one-hot encoding a column with more values would swamp memory
REMEDY_FIELDS = ("feature_weights", "augment", "oversample")  # data keys applied per trial
BUNDLED_TARGET = "target"  # target column name of sklearn: and synthetic: data


@dataclass(frozen=True, eq=False)
class Split:
    """One split's arrays, ready for training."""

    X: np.ndarray  # float32 [n, d], imputed, one-hot encoded, normalized
    y: np.ndarray  # int64 [n] class index, or float32 [n] standardized regression target
    weight: np.ndarray | None  # float32 [n] strengthening factors; None without data.weights
    group: np.ndarray | None  # object [n] str group labels; None without data.group

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True, eq=False)
class Dataset:
    """The loaded data: train/dev/test splits plus what is needed to describe and reproduce them."""

    task: str  # "binary" | "multiclass" | "regression"
    feature_names: list[str]  # after one-hot encoding
    classes: list[str] | None  # original labels as strings, index = class id; None for regression
    target_mean: float  # regression: train mean of the raw target (0.0 for classification)
    target_std: float  # regression: train std of the raw target (1.0 for classification)
    splits: dict[str, Split]  # "train", "dev", "test" (test has 0 rows when its ratio is 0)
    split_info: dict[str, Any]  # JSON-ready content of split.json
    fingerprint: str  # sha256 hex of the data's content, the data spec and the seed
    # raw feature column -> its encoded features' positions (one, or a one-hot block)
    feature_columns: dict[str, list[int]] = field(default_factory=dict)
    numeric: np.ndarray | None = None  # bool [features]: a numeric column (not an indicator)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.task == "multiclass" and self.classes else 1


def load_dataset(spec: DataSpec, seed: int) -> Dataset:
    """Read `spec.source`, check it, split it (deterministic from `seed`) and encode each split."""
    raw = _read_source(spec, seed)
    frame = _apply_drop(raw.frame, spec)
    columns = _roles(frame, spec, raw.default_target)
    target = encode_target(frame[columns.target], spec.task, raw.task_hint, spec.source)
    features = frame.drop(columns=columns.non_features)
    _check_features(features, spec.impute, spec.source)
    groups = _group_labels(frame[spec.group], spec.source) if spec.group else None
    row_hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    part = _partition(spec, target, groups, row_hashes, seed, frame)

    encoder = _fit_encoder(features.iloc[part.index["train"]], spec.impute, spec.source)
    X = _normalize(
        {name: encoder.transform(features.iloc[rows]) for name, rows in part.index.items()},
        encoder.numeric,
        spec.normalize,
    )
    _check_finite(X, encoder.feature_names, spec.source)
    y, target_mean, target_std = _split_targets(target, part.index)
    weights = _row_weights(spec, frame, target, groups, part.index)
    splits = {
        name: Split(
            X=X[name],
            y=y[name],
            weight=None if weights is None else weights[rows],
            group=None if groups is None else groups[rows],
        )
        for name, rows in part.index.items()
    }
    return Dataset(
        task=target.task,
        feature_names=encoder.feature_names,
        classes=target.classes,
        target_mean=target_mean,
        target_std=target_std,
        splits=splits,
        split_info=_split_info(columns.target, part, target, groups, row_hashes, encoder),
        fingerprint=_fingerprint(spec, seed, raw.content),
        feature_columns=encoder.positions,
        numeric=encoder.numeric,
    )


# --- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Raw:
    frame: pd.DataFrame
    default_target: str | None  # the target column when data.target is null
    task_hint: str | None  # "classification" | "regression" when the source knows its task
    content: bytes  # what the fingerprint hashes as "the data"


def _read_source(spec: DataSpec, seed: int) -> _Raw:
    kind, _, name = spec.source.partition(":")
    if kind == "sklearn":
        return _Raw(_read_bundled(name), BUNDLED_TARGET, None, spec.source.encode())
    if kind == "synthetic":
        frame = _make_synthetic(name, spec, seed)
        return _Raw(frame, BUNDLED_TARGET, name, spec.source.encode())
    content = read_file_bytes(Path(spec.source))
    frame = parse_file(Path(spec.source), content)
    return _Raw(frame, None, None, hashlib.sha256(content).digest())


def _read_bundled(name: str) -> pd.DataFrame:
    from sklearn import datasets  # imported here: slow to import, and only these sources need it

    return getattr(datasets, f"load_{name}")(as_frame=True).frame


def _make_synthetic(kind: str, spec: DataSpec, seed: int) -> pd.DataFrame:
    from sklearn import datasets

    options = spec.synthetic
    common = {
        "n_samples": options.samples,
        "n_features": options.features,
        "n_informative": options.informative,
        "random_state": _seed32(seed),
    }
    if kind == "regression":
        X, y = datasets.make_regression(noise=options.noise, **common)
    else:
        X, y = datasets.make_classification(
            n_classes=options.classes,
            n_clusters_per_class=_clusters_per_class(options, spec.source),
            n_redundant=0,  # the rest are pure noise features, so any `informative` fits
            flip_y=_label_noise(options.noise, spec.source),
            **common,
        )
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    frame[BUNDLED_TARGET] = y
    return frame


def _clusters_per_class(options: SyntheticOptions, source: str) -> int:
    """make_classification needs classes * clusters <= 2**informative; prefer its default 2."""
    classes, informative = options.classes, options.informative
    if classes > 2**informative:
        raise InputError(
            f"data.synthetic: {classes} classes need informative >= "
            f"{math.ceil(math.log2(classes))} (got {informative})",
            source=source,
        )
    return 2 if 2 * classes <= 2**informative else 1


def _label_noise(noise: float, source: str) -> float:
    if noise > 1:
        raise InputError(
            "data.synthetic.noise: for synthetic:classification it is the fraction of labels "
            f"replaced at random, between 0 and 1 (got {noise:g})",
            source=source,
        )
    return noise


def _seed32(seed: int) -> int:
    """scikit-learn and numpy generators want a seed in [0, 2**32)."""
    return seed % 2**32


def read_file_bytes(path: Path) -> bytes:
    try:
        kind = path.stat().st_mode
        if not stat.S_ISREG(kind):  # a FIFO would block forever, a device never end
            what = "a folder" if stat.S_ISDIR(kind) else "not a regular file"
            raise InputError(
                f"the data file is {what}; give a .csv, .parquet or .npz file", source=str(path)
            )
        content = path.read_bytes()
    except FileNotFoundError:
        raise InputError(
            "data file not found; check data.source (relative to the spec file)", source=str(path)
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InputError(f"cannot read the data file: {reason}", source=str(path)) from None
    if not content:
        raise InputError("the data file is empty", source=str(path))
    return content


def _parse_csv(content: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(content))


def _parse_parquet(content: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(content), engine="pyarrow")


def _parse_npz(content: bytes) -> pd.DataFrame:
    with np.load(io.BytesIO(content), allow_pickle=False) as arrays:
        columns = {name: arrays[name] for name in arrays.files}
    for name, array in columns.items():
        if array.ndim != 1:
            raise ValueError(
                f"array '{name}' has shape {array.shape}; store each column as its own 1-D array"
            )
    lengths = {name: len(array) for name, array in columns.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} ({n})" for name, n in lengths.items())
        raise ValueError(f"arrays must all have the same length, got {listed}")
    return pd.DataFrame(columns)


PARSERS: dict[str, tuple[str, Callable[[bytes], pd.DataFrame]]] = {
    ".csv": ("CSV", _parse_csv),
    ".parquet": ("Parquet", _parse_parquet),
    ".npz": ("NumPy .npz", _parse_npz),
}


def parse_file(path: Path, content: bytes) -> pd.DataFrame:
    source = str(path)
    kind, parse = PARSERS[path.suffix.lower()]
    if kind == "Parquet":
        _require_pyarrow(source)
    try:
        frame = parse(content)
    except pd.errors.EmptyDataError:
        raise InputError("the data file has no columns", source=source) from None
    except Exception as exc:  # parsers report malformed input with many exception types
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot parse the file as {kind}: {message}", source=source) from None
    if frame.shape[1] == 0:
        raise InputError("the data file has no columns", source=source)
    if len(frame) == 0:
        raise InputError("the data file has no rows", source=source)
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _require_pyarrow(source: str) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise InputError(
            'reading .parquet files needs pyarrow: pip install "hpsearch[parquet]"', source=source
        ) from None


# --- columns ----------------------------------------------------------------------------------


def _columns_hint(name: str, columns: list[str]) -> str:
    """'; did you mean 'x'? (columns: a, b, ...)' for an error about an unknown column."""
    close = difflib.get_close_matches(name, columns, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    shown = ", ".join(columns[:20])
    if len(columns) > 20:
        shown += f", … ({len(columns) - 20} more)"
    return f"{hint} (columns: {shown})"


def _apply_drop(frame: pd.DataFrame, spec: DataSpec) -> pd.DataFrame:
    columns = list(frame.columns)
    unknown = [name for name in spec.drop if name not in columns]
    if unknown:
        names = ", ".join(f"'{name}'" for name in unknown)
        raise InputError(
            f"data.drop: no column {names} in the data{_columns_hint(unknown[0], columns)}",
            source=spec.source,
        )
    return frame.drop(columns=spec.drop)


@dataclass(frozen=True)
class _Columns:
    target: str
    non_features: list[str]  # target, group, split and weight columns: never features


def _roles(frame: pd.DataFrame, spec: DataSpec, default_target: str | None) -> _Columns:
    """Check that the target, group and weight columns exist and are three different columns."""
    target = spec.target or default_target
    if target is None:
        raise InputError(
            "data.target: name the column to predict (required for data files)"
            f"{_columns_hint('', list(frame.columns))}",
            source=spec.source,
        )
    roles = {"data.target": target}
    if spec.group:
        roles["data.group"] = spec.group
    if isinstance(spec.split, SplitColumn):
        roles["data.split.column"] = spec.split.column
    if isinstance(spec.weights, GroupWeights) and not spec.group:
        raise InputError(
            "data.weights: weights by group need data.group (the column naming each row's group)",
            source=spec.source,
        )
    if isinstance(spec.weights, ColumnWeights):
        roles["data.weights.column"] = spec.weights.column
    for key, column in roles.items():
        if column in spec.drop:
            raise InputError(f"data.drop: removes '{column}', which {key} uses", source=spec.source)
        if column not in frame.columns:
            raise InputError(
                f"{key}: no column '{column}' in the data"
                f"{_columns_hint(column, list(frame.columns))}",
                source=spec.source,
            )
    keys_by_column: dict[str, list[str]] = {}
    for key, column in roles.items():
        keys_by_column.setdefault(column, []).append(key)
    for column, keys in keys_by_column.items():
        if len(keys) > 1:
            raise InputError(
                f"{' and '.join(keys)} both name column '{column}'; use different columns",
                source=spec.source,
            )
    return _Columns(target, list(roles.values()))


# --- target -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Target:
    task: str
    values: np.ndarray  # int64 class ids, or float64 raw regression target, for every row
    classes: list[str] | None


def encode_target(target: pd.Series, task: str, hint: str | None, source: str) -> _Target:
    """Infer or check the task, and encode class labels 0..K-1 in sorted order."""
    name = target.name
    missing = int(target.isna().sum())
    if missing:
        raise InputError(
            f"data.target: column '{name}' has {missing} missing value(s); "
            "remove those rows or choose another target",
            source=source,
        )
    numeric = is_numeric_dtype(target) and not is_bool_dtype(target)
    if task == "regression" and not numeric:
        raise InputError(
            f"data.task: regression needs a numeric target, but column '{name}' holds labels "
            f"(e.g. '{target.iloc[0]}'); use task: auto, binary or multiclass",
            source=source,
        )
    if task == "regression" or (task == "auto" and _looks_continuous(target, numeric, hint)):
        return _Target("regression", _regression_values(target, source), None)
    if numeric:
        values = target.to_numpy(dtype=np.float64)
        if np.all(np.mod(values, 1) == 0):
            values = values.astype(np.int64)  # so labels read "1", not "1.0"
    else:
        values = _labels(target).to_numpy(dtype=object)
    uniques, codes = np.unique(values, return_inverse=True)
    classes = [str(label) for label in uniques]
    if len(classes) < 2:
        raise InputError(
            f"data.target: column '{name}' has a single class ('{classes[0]}'); "
            "a classifier needs at least two",
            source=source,
        )
    if task == "binary" and len(classes) != 2:
        raise InputError(
            f"data.task: binary needs exactly 2 classes, but column '{name}' has "
            f"{len(classes)}; use task: multiclass (or auto)",
            source=source,
        )
    resolved = "binary" if task != "multiclass" and len(classes) == 2 else "multiclass"
    return _Target(resolved, codes.reshape(-1).astype(np.int64), classes)


def _looks_continuous(target: pd.Series, numeric: bool, hint: str | None) -> bool:
    """task: auto: labels, or at most 20 distinct integers, are classes; other numbers are not."""
    if hint is not None:
        return hint == "regression"
    if not numeric:
        return False
    values = target.to_numpy(dtype=np.float64)
    is_integer = bool(np.all(np.mod(values, 1) == 0))  # inf and nan fail this
    return not (is_integer and target.nunique() <= MAX_INTEGER_CLASSES)


def _regression_values(target: pd.Series, source: str) -> np.ndarray:
    values = target.to_numpy(dtype=np.float64)
    infinite = int((~np.isfinite(values)).sum())
    if infinite:
        raise InputError(
            f"data.target: column '{target.name}' has {infinite} infinite value(s); "
            "remove those rows",
            source=source,
        )
    return values


def _split_targets(
    target: _Target, index: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], float, float]:
    """y per split; a regression target is standardized with the train split's mean and std."""
    if target.task != "regression":
        return {name: target.values[rows] for name, rows in index.items()}, 0.0, 1.0
    train = target.values[index["train"]]
    mean = float(train.mean())
    std = float(train.std()) or 1.0  # a constant target: nothing to scale
    y = {
        name: ((target.values[rows] - mean) / std).astype(np.float32)
        for name, rows in index.items()
    }
    return y, mean, std


# --- features ---------------------------------------------------------------------------------


def is_numeric(column: pd.Series) -> bool:
    return is_numeric_dtype(column) and not is_bool_dtype(column)


def _check_features(features: pd.DataFrame, impute: str | None, source: str) -> None:
    """Reject no features, empty columns, infinities, and missing values when impute is null."""
    if features.shape[1] == 0:
        raise InputError(
            "no feature columns left after removing the target, data.group, weights and data.drop",
            source=source,
        )
    missing = features.isna().sum()
    empty = [name for name, count in missing.items() if count == len(features)]
    if empty:
        raise InputError(
            f"column '{empty[0]}' is entirely missing; remove it with data.drop", source=source
        )
    for name in features.columns:
        column = features[name]
        if is_numeric(column):
            infinite = int(np.isinf(column.to_numpy(dtype=np.float64, na_value=0.0)).sum())
            if infinite:
                raise InputError(
                    f"column '{name}' has {infinite} infinite value(s); replace or drop them",
                    source=source,
                )
    if impute is None and missing.any():
        listed = ", ".join(
            f"'{name}' ({count} row{'s' if count > 1 else ''})"
            for name, count in missing.items()
            if count
        )
        raise InputError(
            f"missing values in {listed}; set data.impute: mean|median|most_frequent "
            "(or remove the column with data.drop)",
            source=source,
        )


def _labels(column: pd.Series) -> pd.Series:
    """A categorical column as strings (missing stays missing)."""
    return column.astype("string")


@dataclass(frozen=True)
class _Encoder:
    """Imputation values and one-hot categories per raw column, learned on the train split."""

    columns: list[str]
    fills: dict[str, Any]  # raw column -> value for its missing entries (when data.impute is set)
    categories: dict[str, list[str]]  # categorical raw column -> its train categories

    def _layout(self) -> list[tuple[str, bool]]:
        """(feature name, is numeric) per encoded feature, in column order."""
        layout: list[tuple[str, bool]] = []
        for name in self.columns:
            if name in self.categories:
                layout.extend((f"{name}={value}", False) for value in self.categories[name])
            else:
                layout.append((name, True))
        return layout

    @property
    def feature_names(self) -> list[str]:
        return [name for name, _ in self._layout()]

    @property
    def positions(self) -> dict[str, list[int]]:
        """Raw column -> the positions of its encoded features."""
        positions: dict[str, list[int]] = {}
        at = 0
        for name in self.columns:
            width = len(self.categories[name]) if name in self.categories else 1
            positions[name] = list(range(at, at + width))
            at += width
        return positions

    @property
    def numeric(self) -> np.ndarray:
        """Which encoded features are numeric columns (one-hot indicators are not scaled)."""
        return np.array([numeric for _, numeric in self._layout()], dtype=bool)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """float64 [rows, features]; unseen categories encode as all-zero indicators."""
        blocks = [self._encode(name, frame[name]) for name in self.columns]
        return np.concatenate(blocks, axis=1)

    def _encode(self, name: str, column: pd.Series) -> np.ndarray:
        fill = self.fills.get(name)
        if name not in self.categories:
            values = column.to_numpy(dtype=np.float64, na_value=np.nan)
            if fill is not None:
                values = np.where(np.isnan(values), fill, values)
            return values[:, None]
        labels = _labels(column)
        if fill is not None:
            labels = labels.fillna(fill)
        codes = pd.Index(self.categories[name]).get_indexer(labels)  # -1: unseen
        onehot = np.zeros((len(column), len(self.categories[name])))
        seen = codes >= 0
        onehot[np.flatnonzero(seen), codes[seen]] = 1.0
        return onehot


def _fit_encoder(train: pd.DataFrame, impute: str | None, source: str) -> _Encoder:
    fills: dict[str, Any] = {}
    categories: dict[str, list[str]] = {}
    for name in train.columns:
        numeric = is_numeric(train[name])
        column = train[name] if numeric else _labels(train[name])
        if impute is not None:
            fills[name] = _fill_value(column, impute if numeric else "most_frequent", source)
        if not numeric:
            categories[name] = sorted(column.dropna().unique())
            if len(categories[name]) > MAX_CATEGORIES:
                raise InputError(
                    f"column '{name}' has {len(categories[name]):,} distinct values in the train "
                    f"split (more than {MAX_CATEGORIES:,} one-hot features); convert it to "
                    "numbers or remove it with data.drop",
                    source=source,
                )
    return _Encoder(list(train.columns), fills, categories)


def _fill_value(column: pd.Series, how: str, source: str) -> Any:
    """The train split's mean, median or most frequent value (the smallest one on ties)."""
    present = column.dropna()
    if present.empty:
        raise InputError(
            f"column '{column.name}' has no values in the train split to impute from; "
            "remove it with data.drop",
            source=source,
        )
    if how == "mean":
        return float(present.mean())
    if how == "median":
        return float(present.median())
    return present.mode().iloc[0]


def _normalize(
    blocks: dict[str, np.ndarray], numeric: np.ndarray, how: str
) -> dict[str, np.ndarray]:
    """Scale the numeric features with statistics of the train split; cast everything to float32.

    Overflow is not warned about here: `_check_finite` turns it into an error naming the column."""
    with np.errstate(over="ignore", invalid="ignore"):
        if how != "none" and numeric.any():
            # Imported here: scikit-learn takes most of a second to import.
            from sklearn.preprocessing import MinMaxScaler, StandardScaler

            scaler = StandardScaler() if how == "standard" else MinMaxScaler()
            scaler.fit(blocks["train"][:, numeric])
            for X in blocks.values():
                if len(X):
                    X[:, numeric] = scaler.transform(X[:, numeric])
        return {name: X.astype(np.float32) for name, X in blocks.items()}


def _check_finite(X: dict[str, np.ndarray], names: list[str], source: str) -> None:
    for matrix in X.values():
        bad = ~np.isfinite(matrix).all(axis=0)
        if bad.any():
            raise InputError(
                f"column '{names[int(np.argmax(bad))]}' has values too large for 32-bit floats "
                "(about 3.4e38); rescale the column or remove it with data.drop",
                source=source,
            )


# --- groups and weights -----------------------------------------------------------------------


def _group_labels(column: pd.Series, source: str) -> np.ndarray:
    missing = int(column.isna().sum())
    if missing:
        raise InputError(
            f"data.group: column '{column.name}' has {missing} missing value(s); "
            "every row needs a group",
            source=source,
        )
    return _labels(column).to_numpy(dtype=object)


def _row_weights(
    spec: DataSpec,
    frame: pd.DataFrame,
    target: _Target,
    groups: np.ndarray | None,
    index: dict[str, np.ndarray],
) -> np.ndarray | None:
    """float32 strengthening factor per row (all rows), or None without data.weights."""
    if spec.weights is None:
        return None
    if spec.weights == "balanced":
        weights = _balanced_weights(target, index["train"], spec.source)
    elif isinstance(spec.weights, ColumnWeights):
        weights = _column_weights(frame[spec.weights.column], spec.source)
    else:
        assert groups is not None  # _roles requires data.group for group weights
        weights = _group_weights(spec.weights, groups, spec.source)
    for name, rows in index.items():
        if len(rows) and not weights[rows].sum() > 0:
            raise InputError(
                f"data.weights: every weight in the {name} split is 0; give some rows weight > 0",
                source=spec.source,
            )
    return weights.astype(np.float32)


def _balanced_weights(target: _Target, train_rows: np.ndarray, source: str) -> np.ndarray:
    """Inverse class frequency on the train split: w_c = n_train / (K * count_c)."""
    if target.classes is None:
        raise InputError(
            "data.weights: balanced weights classes, so it needs a classification task; "
            "for regression use {column: <name>} or {group: {...}}",
            source=source,
        )
    counts = np.bincount(target.values[train_rows], minlength=len(target.classes))
    absent = [label for label, count in zip(target.classes, counts, strict=True) if count == 0]
    if absent:
        raise InputError(
            f"data.weights: balanced needs every class in the train split, but class "
            f"'{absent[0]}' has no train rows; add rows of it or use weights: null",
            source=source,
        )
    per_class = len(train_rows) / (len(target.classes) * counts)
    return per_class[target.values]


def _column_weights(column: pd.Series, source: str) -> np.ndarray:
    key = f"data.weights.column: column '{column.name}'"
    if not is_numeric(column):
        raise InputError(f"{key} must hold numbers (got {column.dtype})", source=source)
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise InputError(f"{key} has {bad} missing or infinite value(s)", source=source)
    negative = int((values < 0).sum())
    if negative:
        raise InputError(
            f"{key} has {negative} negative value(s); weights must be >= 0", source=source
        )
    return values


def _group_weights(weights: GroupWeights, groups: np.ndarray, source: str) -> np.ndarray:
    present = sorted(set(groups))
    missing = [label for label in present if label not in weights.group]
    if missing:
        raise InputError(
            f"data.weights.group: no weight for group(s) {', '.join(missing)} "
            f"(groups in the data: {', '.join(present)})",
            source=source,
        )
    return pd.Series(groups).map(weights.group).to_numpy(dtype=np.float64)


# --- splitting --------------------------------------------------------------------------------


def _ratios(split: str | SplitRatios, rows: int) -> tuple[dict[str, float], str]:
    """The split ratios and a human description of the rule that chose them."""
    if isinstance(split, SplitRatios):
        ratios = {"train": split.train, "dev": split.dev, "test": split.test}
        return ratios, f"given: {_percentages(ratios)}"
    if rows < AUTO_SPLIT_ROWS:
        ratios = {"train": 0.6, "dev": 0.2, "test": 0.2}
        return ratios, f"auto: 60/20/20 (fewer than {AUTO_SPLIT_ROWS:,} rows)"
    ratios = {"train": 0.98, "dev": 0.01, "test": 0.01}
    return ratios, f"auto: 98/1/1 ({AUTO_SPLIT_ROWS:,} rows or more)"


def _percentages(ratios: dict[str, float]) -> str:
    return "/".join(f"{ratios[name] * 100:g}" for name in SPLITS)


def split_sizes(rows: int, ratios: dict[str, float]) -> dict[str, int]:
    """Rows per split: dev and test rounded half up, train takes the rest."""
    dev = math.floor(rows * ratios["dev"] + 0.5)
    test = math.floor(rows * ratios["test"] + 0.5)
    return {"train": rows - dev - test, "dev": dev, "test": test}


def _splits_needed(sizes: dict[str, int]) -> int:
    return sum(1 for size in sizes.values() if size > 0)


def _choose_strata(
    target: _Target, groups: np.ndarray | None, splits: int
) -> tuple[np.ndarray | None, list[str], str]:
    """The finest stratification whose every stratum can reach each split: (class, group),
    class, group, or none. Returns the stratum codes, what they stratify by, and a note when
    a finer one had to be given up."""
    factors: dict[str, np.ndarray] = {}
    if target.task != "regression":
        factors["class"] = target.values
    if groups is not None:
        factors["group"] = pd.factorize(groups, sort=True)[0]
    if not factors:
        return None, [], ""
    candidates = [list(factors)] + ([[name] for name in factors] if len(factors) > 1 else [])
    note = ""
    for by in candidates:
        codes = _strata_codes([factors[name] for name in by])
        smallest = int(np.bincount(codes).min())
        if smallest >= splits:
            return codes, by, note
        note = note or (
            f"not stratified by {' and '.join(by)}: its rarest stratum has {smallest} row(s), "
            f"fewer than the {splits} splits"
        )
    return None, [], note


def _strata_codes(factors: list[np.ndarray]) -> np.ndarray:
    """One dense code per distinct combination of the factors' values."""
    combined = np.stack(factors, axis=1)
    return np.unique(combined, axis=0, return_inverse=True)[1].reshape(-1)


def assign_splits(strata: np.ndarray | None, sizes: dict[str, int], seed: int) -> np.ndarray:
    """Split id per row (0 train, 1 dev, 2 test), a seeded shuffle spread evenly over strata.

    Each row gets its quantile within its stratum (in shuffled order); rows sorted by quantile
    fill train, then dev, then test. So every stratum lands in each split in proportion, and
    the split sizes are exact."""
    rows = sum(sizes.values())
    shuffled = np.random.default_rng(_seed32(seed)).permutation(rows)
    codes = np.zeros(rows, dtype=np.int64) if strata is None else strata[shuffled]
    counts = np.bincount(codes)
    by_stratum = np.argsort(codes, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(rows)
    rank[by_stratum] = np.arange(rows) - starts[codes[by_stratum]]
    quantile = (rank + 0.5) / counts[codes]
    ordered = shuffled[np.argsort(quantile, kind="stable")]
    assignment = np.empty(rows, dtype=np.int8)
    bounds = np.cumsum([sizes[name] for name in SPLITS])
    for k, part in enumerate(np.split(ordered, bounds[:-1])):
        assignment[part] = k
    return assignment


def cross_split_duplicates_kept(row_hashes: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """Mask of rows to keep: copies of a row stay only in the split of its first occurrence."""
    _, first, inverse = np.unique(row_hashes, return_index=True, return_inverse=True)
    return assignment == assignment[first[inverse.reshape(-1)]]


def _check_split_sizes(
    index: dict[str, np.ndarray],
    ratios: dict[str, float],
    rows: int,
    duplicates: int,
    source: str,
) -> None:
    for name in SPLITS:
        if len(index[name]) == 0 and (name != "test" or ratios["test"] > 0):
            removed = f" ({duplicates} duplicate(s) removed)" if duplicates else ""
            raise InputError(
                f"data.split: the {name} split would be empty with {rows} row(s){removed}; "
                f"add rows or give {name} a larger ratio",
                source=source,
            )


@dataclass(frozen=True, eq=False)
class _Partition:
    """Which rows go to which split, and how that was decided."""

    index: dict[str, np.ndarray]  # sorted row positions per split
    ratios: dict[str, float]
    rule: str
    stratified_by: list[str]
    duplicates_removed: int


def _partition(
    spec: DataSpec,
    target: _Target,
    groups: np.ndarray | None,
    row_hashes: np.ndarray,
    seed: int,
    frame: pd.DataFrame,
) -> _Partition:
    """Stratified, seeded split of the rows (or the split a column gives), without copies of a
    row in two splits; plus a train_dev split carved from train when train and dev may come
    from different mixes of distributions."""
    rows = len(row_hashes)
    if isinstance(spec.split, SplitColumn):
        assignment = _column_assignment(frame[spec.split.column], spec)
        counts = np.bincount(assignment, minlength=len(SPLITS))
        ratios = {name: float(counts[k]) / rows for k, name in enumerate(SPLITS)}
        rule, stratified_by, note = f"given by column '{spec.split.column}'", [], ""
    else:
        ratios, rule = _ratios(spec.split, rows)
        sizes = split_sizes(rows, ratios)
        strata, stratified_by, note = _choose_strata(target, groups, _splits_needed(sizes))
        assignment = assign_splits(strata, sizes, seed)
    keep = cross_split_duplicates_kept(row_hashes, assignment)
    index = {name: np.flatnonzero(keep & (assignment == k)) for k, name in enumerate(SPLITS)}
    duplicates = int((~keep).sum())
    _check_split_sizes(index, ratios, rows, duplicates, spec.source)
    rule = f"{rule}; {note}" if note else rule
    mixes_may_differ = isinstance(spec.split, SplitColumn) or (
        groups is not None and "group" not in stratified_by
    )
    if mixes_may_differ:
        index, carved = _carve_train_dev(index, target, seed)
        rule += f"; train_dev: {carved} of the train rows, never trained on"
    return _Partition(index, ratios, rule, stratified_by, duplicates)


def _column_assignment(column: pd.Series, spec: DataSpec) -> np.ndarray:
    """Split id per row from a column of train / dev / test values (any case)."""
    values = column.astype("string").str.strip().str.lower()
    codes = values.map({name: k for k, name in enumerate(SPLITS)})
    bad = sorted(set(column[codes.isna()].astype(str)))
    if bad:
        shown = ", ".join(repr(v) for v in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise InputError(
            f"data.split.column: column '{column.name}' holds {shown}; every value must be "
            "train, dev or test",
            source=spec.source,
        )
    return codes.to_numpy(dtype=np.int8)


def _carve_train_dev(
    index: dict[str, np.ndarray], target: _Target, seed: int
) -> tuple[dict[str, np.ndarray], int]:
    """Move some train rows into a train_dev split: the train distribution, never trained on,
    as many rows as dev has (at most a fifth of train), stratified by class."""
    train = index["train"]
    size = max(1, min(len(index["dev"]), len(train) // 5))
    strata = None
    if target.task != "regression":
        codes = pd.factorize(target.values[train], sort=True)[0]
        strata = codes if np.bincount(codes).min() >= 2 else None
    moved = assign_splits(strata, {"train": len(train) - size, "dev": size, "test": 0}, seed + 1)
    return {**index, "train": train[moved == 0], "train_dev": train[moved == 1]}, size


# --- description and fingerprint --------------------------------------------------------------


def _split_info(
    target_name: str,
    part: _Partition,
    target: _Target,
    groups: np.ndarray | None,
    row_hashes: np.ndarray,
    encoder: _Encoder,
) -> dict[str, Any]:
    """The JSON-ready content of split.json."""
    return {
        "task": target.task,
        "target": target_name,
        "rows": len(row_hashes),
        "ratios": dict(part.ratios),
        "rule": part.rule,
        "stratified": bool(part.stratified_by),
        "stratified_by": part.stratified_by,
        "duplicates_removed": part.duplicates_removed,
        "features": encoder.feature_names,
        "splits": {
            name: _describe_split(rows, target, groups, row_hashes)
            for name, rows in part.index.items()
        },
    }


def _describe_split(
    rows: np.ndarray, target: _Target, groups: np.ndarray | None, row_hashes: np.ndarray
) -> dict[str, Any]:
    """Size, class balance, group counts and an order-independent content hash of one split."""
    balance = None
    if target.classes is not None:
        counts = np.bincount(target.values[rows], minlength=len(target.classes))
        balance = {label: int(n) for label, n in zip(target.classes, counts, strict=True)}
    group_counts = None
    if groups is not None:
        labels = sorted(set(groups))
        in_split = pd.Series(groups[rows]).value_counts()
        group_counts = {label: int(in_split.get(label, 0)) for label in labels}
    content = np.sort(row_hashes[rows]).astype("<u8").tobytes()
    return {
        "size": len(rows),
        "class_balance": balance,
        "groups": group_counts,
        "hash": hashlib.sha256(content).hexdigest(),
    }


def _fingerprint(spec: DataSpec, seed: int, content: bytes) -> str:
    """sha256 of the data, the data spec and the seed; a file's folder does not count."""
    portable = spec.model_copy(update={"source": Path(spec.source).name}) if spec.is_file else spec
    digest = hashlib.sha256(content)
    # the remedies are applied per trial to the loaded data (hpsearch.remedies), not part of it
    digest.update(portable.model_dump_json(exclude=set(REMEDY_FIELDS)).encode())
    digest.update(str(seed).encode())
    return digest.hexdigest()
