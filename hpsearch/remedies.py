"""The data remedies, applied per trial to the loaded data: attribute strengths
(`data.feature_weights`), input noise on train batches (`data.augment`) and oversampling of
the train split (`data.oversample`). numpy; SMOTE comes from imbalanced-learn (the `smote`
extra). No torch.

They are searchable, so `load_dataset` never applies them: the data is loaded once per run
and each trial's spec says how its model sees it. Dev and test are never changed:
oversampling returns a new train split to fit on, noise is drawn by the training loop on
train batches only, and strengths scale every split's inputs alike (they belong to the model,
like its first layer's weights, into which the trained model folds them).
"""

from __future__ import annotations

import difflib
import weakref
from typing import Any

import numpy as np

from hpsearch.data import Dataset, Split
from hpsearch.errors import InputError
from hpsearch.spec import DataSpec, OversampleSpec


def check_remedies(spec: DataSpec, data: Dataset, source: str | None = None) -> None:
    """Every column and class the remedies name exists, and the data suits them (an
    InputError naming the key otherwise), before any run folder exists."""
    for column in spec.feature_weights:
        if column not in data.feature_columns:
            close = difflib.get_close_matches(column, list(data.feature_columns), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            shown = ", ".join(list(data.feature_columns)[:8])
            more = ", ..." if len(data.feature_columns) > 8 else ""
            raise InputError(
                f"data.feature_weights: '{column}' is not a feature column{hint} "
                f"(features: {shown}{more}; the target, group and dropped columns are not "
                "features)",
                source=source,
            )
    if spec.augment is not None and spec.augment.noise > 0 and not _numeric(data).any():
        raise InputError(
            "data.augment.noise: the data has no numeric features to add noise to",
            source=source,
        )
    if spec.oversample is not None:
        _check_oversample(spec.oversample, data, source)


def _check_oversample(spec: OversampleSpec, data: Dataset, source: str | None) -> None:
    if data.classes is None:
        raise InputError(
            "data.oversample rebalances classes, so it needs a classification task; for "
            "regression strengthen rows with data.weights instead",
            source=source,
        )
    if isinstance(spec.classes, dict):
        unknown = [name for name in spec.classes if name not in data.classes]
        if unknown:
            raise InputError(
                f"data.oversample: no class '{unknown[0]}' in the target (classes: "
                f"{', '.join(data.classes[:20])})",
                source=source,
            )
    counts = class_counts(data.splits["train"].y, data)
    targets = target_counts(spec, counts, data)
    if spec.method == "smote":
        _require_imblearn(source)
        for name, target in targets.items():
            if target > counts[name] and counts[name] <= spec.k_neighbors:
                raise InputError(
                    f"data.oversample: class '{name}' has {counts[name]} train row(s); SMOTE "
                    f"needs more than k_neighbors ({spec.k_neighbors}) of a class it "
                    "oversamples; lower data.oversample.k_neighbors or use method: random",
                    source=source,
                )


def _require_imblearn(source: str | None) -> None:
    try:
        import imblearn  # noqa: F401
    except ImportError:
        raise InputError(
            "data.oversample: method smote needs imbalanced-learn: pip install 'hpsearch[smote]'",
            source=source,
        ) from None


def _numeric(data: Dataset) -> np.ndarray:
    if data.numeric is None:
        return np.ones(data.n_features, dtype=bool)
    return data.numeric


# --- attribute strengths and noise -----------------------------------------------------------


def input_scale(spec: DataSpec, data: Dataset) -> np.ndarray | None:
    """float32 [features]: each encoded feature's strength (a one-hot column's indicators all
    take the column's); None when every strength is 1."""
    if not spec.feature_weights or all(s == 1 for s in spec.feature_weights.values()):
        return None
    scale = np.ones(data.n_features, dtype=np.float32)
    for column, strength in spec.feature_weights.items():
        scale[data.feature_columns[column]] = strength
    return scale


def noise_std(spec: DataSpec, data: Dataset) -> np.ndarray | None:
    """float32 [features]: the noise's standard deviation per feature, sigma times the
    feature's train standard deviation for numeric features and 0 for one-hot indicators;
    None without noise."""
    if spec.augment is None or spec.augment.noise == 0:
        return None
    train = data.splits["train"].X
    spread = train.std(axis=0) if len(train) > 1 else np.ones(data.n_features)
    return (spec.augment.noise * spread * _numeric(data)).astype(np.float32)


# --- oversampling ----------------------------------------------------------------------------


def class_counts(y: np.ndarray, data: Dataset) -> dict[str, int]:
    assert data.classes is not None
    counts = np.bincount(y, minlength=len(data.classes))
    return {label: int(n) for label, n in zip(data.classes, counts, strict=True)}


def target_counts(spec: OversampleSpec, counts: dict[str, int], data: Dataset) -> dict[str, int]:
    """How many train rows each class has after oversampling (never fewer than before)."""
    if spec.classes == "minority":
        largest = max(counts.values())
        return {name: max(n, largest) for name, n in counts.items()}
    factors: dict[str, float] = spec.classes  # type: ignore[assignment]
    return {name: max(n, round(n * factors.get(name, 1.0))) for name, n in counts.items()}


def oversampled(spec: DataSpec, data: Dataset, seed: int) -> Split:
    """The train split to fit on: the train split plus the oversampled rows (the train split
    itself without data.oversample). Deterministic from `seed`."""
    train = data.splits["train"]
    if spec.oversample is None:
        return train
    # asked for by the run's split.json, each trial's params.json and its training: computed
    # once per data, settings and seed (SMOTE's neighbour search is not free)
    key = (spec.oversample.model_dump_json(), seed)
    cached = _OVERSAMPLED.setdefault(data, {})
    if key not in cached:
        cached[key] = _oversample(train, spec.oversample, data, seed)
    return cached[key]


_OVERSAMPLED: weakref.WeakKeyDictionary[Dataset, dict[tuple[str, int], Split]] = (
    weakref.WeakKeyDictionary()
)


def _oversample(train: Split, spec: OversampleSpec, data: Dataset, seed: int) -> Split:
    counts = class_counts(train.y, data)
    targets = target_counts(spec, counts, data)
    if targets == counts:
        return train
    if spec.method == "smote":
        return _smote(train, spec, targets, data, seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    extra = [
        rng.choice(np.flatnonzero(train.y == k), size=targets[name] - counts[name])
        for k, name in enumerate(data.classes or [])
        if targets[name] > counts[name] and counts[name] > 0
    ]
    rows = np.concatenate([np.arange(len(train)), *extra])
    weight = None if train.weight is None else train.weight[rows]
    group = None if train.group is None else train.group[rows]
    return Split(train.X[rows], train.y[rows], weight, group)


def _smote(
    train: Split, spec: OversampleSpec, targets: dict[str, int], data: Dataset, seed: int
) -> Split:
    from imblearn.over_sampling import SMOTE

    assert data.classes is not None
    counts = class_counts(train.y, data)
    strategy = {k: targets[name] for k, name in enumerate(data.classes) if counts[name] > 0}
    sampler = SMOTE(
        sampling_strategy=strategy,
        k_neighbors=spec.k_neighbors,
        random_state=int(np.random.SeedSequence([seed, 2]).generate_state(1)[0]),
    )
    X, y = sampler.fit_resample(train.X, train.y)
    X = _snap_indicators(np.asarray(X, dtype=np.float32), data, len(train))
    y = np.asarray(y, dtype=train.y.dtype)
    # imbalanced-learn keeps the original rows first; a new row gets its class's mean weight
    weight = None
    if train.weight is not None:
        new = y[len(train) :]
        means = np.array(
            [
                train.weight[train.y == k].mean() if (train.y == k).any() else 1.0
                for k in range(len(data.classes))
            ],
            dtype=np.float32,
        )
        weight = np.concatenate([train.weight, means[new]]).astype(np.float32)
    return Split(X, y, weight, None)


def _snap_indicators(X: np.ndarray, data: Dataset, originals: int) -> np.ndarray:
    """Interpolating between two rows blends their one-hot indicators; a new row takes the
    category with the larger share, as a categorical value must be one of them."""
    numeric = _numeric(data)
    for positions in data.feature_columns.values():
        if len(positions) == 1 and numeric[positions[0]]:
            continue
        block = X[originals:, positions]
        present = block.max(axis=1) > 0
        snapped = np.zeros_like(block)
        snapped[np.flatnonzero(present), block[present].argmax(axis=1)] = 1.0
        X[originals:, positions] = snapped
    return X


def resampling_info(spec: DataSpec, data: Dataset, seed: int) -> dict[str, Any] | None:
    """What data.oversample did to the train split, for split.json and params.json: rows and
    class counts before and after."""
    if spec.oversample is None:
        return None
    fitted = oversampled(spec, data, seed)
    return {
        "method": spec.oversample.method,
        "rows_before": len(data.splits["train"]),
        "rows_after": len(fitted),
        "before": class_counts(data.splits["train"].y, data),
        "after": class_counts(fitted.y, data),
    }
