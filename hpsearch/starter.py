"""`hpsearch init`: look at a data file and write a commented starter spec that runs as written.

`inspect_data` reads the file with data.py's own reader and applies data.py's own task rule, so
what the starter says about the data is what a run will see. `starter_spec` renders the profile
through a hand-written template (YAML dumpers drop comments, and the comments are the point);
`write_starter` puts it on disk, never over an existing file unless asked.
"""

from __future__ import annotations

import json
import math
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from hpsearch.data import (
    AUTO_SPLIT_ROWS,
    MAX_CATEGORIES,
    MAX_INTEGER_CLASSES,
    PARSERS,
    encode_target,
    is_numeric,
    parse_file,
    read_file_bytes,
)
from hpsearch.errors import InputError
from hpsearch.spec import SpecLoader, parse_yaml, spec_from_dict

# Column names taken as the target, in this order, when --target is not given (any case).
TARGET_NAMES = ("target", "label", "labels", "class", "y", "species", "outcome")
# The last word of a column name that marks an identifier: PassengerId, user_id, ID, row_index.
ID_WORDS = frozenset({"id", "idx", "index", "uuid", "guid"})
ROW_NUMBER_MIN_ROWS = 20  # consecutive unique integers in fewer rows can be a real feature
# Sizing the budget: a laptop CPU trains small MLPs at roughly FLOPS (measured: 2 cores, torch
# 2.13, ~30 GFLOP/s on 200-input data); a first run should take at most SECONDS if no trial
# stops early, but never fewer than MIN_EPOCHS epochs or MIN_TRIALS trials.
FLOPS = 30e9
OVERHEAD = 8_000  # narrow layers cost as if they had this many more weights (measured)
SECONDS = 300
MIN_EPOCHS, MIN_TRIALS = 5, 6
IMBALANCED_BELOW = 0.5  # smallest class / largest class under this: hint at weights: balanced
LISTED = 10  # at most this many columns or classes named on one header line
EXISTS = "already exists; pass --force to overwrite it"
COMMENT_AT = 30  # comments start in this column (0-based), as in the README's spec
WIDTH = 100  # a comment that would run past this goes on its own line above


# --- inspecting the data ----------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnProfile:
    """One column besides the target: what it holds and, when it cannot be a feature, why."""

    name: str
    kind: str  # "numeric" | "categorical" | "constant" | "id" | "empty"
    missing: int
    distinct: int  # distinct present values
    drop_reason: str | None = None  # None: used as a feature

    @property
    def is_feature(self) -> bool:
        return self.drop_reason is None

    @property
    def inputs(self) -> int:
        """Network inputs it becomes: one number, or one indicator per category."""
        return self.distinct if self.kind == "categorical" else 1


@dataclass(frozen=True)
class DataProfile:
    """What `hpsearch init` saw in a data file."""

    path: Path
    rows: int
    columns: tuple[ColumnProfile, ...]  # every column but the target, in file order
    target: str
    target_reason: str | None  # why the target was picked; None when the caller named it
    task: str  # "binary" | "multiclass" | "regression", by data.py's task: auto rule
    class_counts: dict[str, int] | None  # classification: rows per class, in class order
    target_range: tuple[float, float, float, float] | None  # regression: min, max, mean, std

    @property
    def features(self) -> list[ColumnProfile]:
        return [c for c in self.columns if c.is_feature]

    @property
    def dropped(self) -> list[ColumnProfile]:
        return [c for c in self.columns if not c.is_feature]

    @property
    def missing(self) -> dict[str, int]:
        """Missing values per feature column that has any."""
        return {c.name: c.missing for c in self.features if c.missing}

    @property
    def inputs(self) -> int:
        return sum(c.inputs for c in self.features)

    @property
    def outputs(self) -> int:
        """Network outputs: one per class for multiclass, else one."""
        return len(self.class_counts or {}) if self.task == "multiclass" else 1

    @property
    def balance(self) -> float | None:
        """Smallest class count / largest; None for regression."""
        if not self.class_counts:
            return None
        counts = self.class_counts.values()
        return min(counts) / max(counts)

    @property
    def imbalanced(self) -> bool:
        return self.balance is not None and self.balance < IMBALANCED_BELOW


def read_table(path: Path) -> pd.DataFrame:
    """The data file as data.py reads it for a run; an InputError naming it when it can't."""
    source = str(path)
    if not path.exists():
        raise InputError("data file not found", source=source)
    if path.is_dir():
        raise InputError("is a folder; give a .csv, .parquet or .npz file", source=source)
    if path.suffix.lower() not in PARSERS:
        raise InputError(
            f"cannot read '{path.suffix}' files; give a .csv, .parquet or .npz file", source=source
        )
    return parse_file(path, read_file_bytes(path))


def inspect_data(path: Path, target: str | None = None) -> DataProfile:
    """Read a data file and describe its columns, target and task.

    Raises InputError when the file cannot be read, `target` is not a column, or the target
    cannot be learned (missing values, a single class)."""
    frame = read_table(path)
    profiles = {name: profile_column(frame[name]) for name in frame.columns}
    name, reason = _pick_target(list(frame.columns), profiles, target, str(path))
    task, counts, target_range = _describe_target(frame[name], reason, str(path))
    return DataProfile(
        path=path,
        rows=len(frame),
        columns=tuple(p for column, p in profiles.items() if column != name),
        target=name,
        target_reason=reason,
        task=task,
        class_counts=counts,
        target_range=target_range,
    )


def profile_column(column: pd.Series) -> ColumnProfile:
    """Kind, missing count and distinct values of one column, and why to drop it, if so."""
    name = str(column.name)
    present = column.dropna()
    missing, distinct = len(column) - len(present), int(present.nunique())
    if distinct == 0:
        return ColumnProfile(name, "empty", missing, 0, "every value is missing")
    if distinct == 1:
        return ColumnProfile(
            name, "constant", missing, 1, f"always {_shown(present.iloc[0])}: nothing to learn"
        )
    if is_numeric(column):
        reason = _numeric_drop_reason(name, present, distinct)
        kind = "id" if reason and "infinite" not in reason else "numeric"
        return ColumnProfile(name, kind, missing, distinct, reason)
    if distinct == len(present):
        return ColumnProfile(
            name, "id", missing, distinct, "every value is unique: nothing carries to new rows"
        )
    reason = None
    if distinct > MAX_CATEGORIES:  # data.py refuses to one-hot encode that many
        reason = f"{distinct:,} distinct labels: too many to one-hot encode"
    return ColumnProfile(name, "categorical", missing, distinct, reason)


def _numeric_drop_reason(name: str, present: pd.Series, distinct: int) -> str | None:
    values = present.to_numpy(dtype=np.float64)
    infinite = int(np.isinf(values).sum())
    if infinite:  # data.py refuses infinite features
        return f"{infinite} infinite value(s)"
    if not np.all(np.mod(values, 1) == 0):
        return None
    if _named_like_id(name):
        return "named like an id: its numbers are labels, not amounts"
    consecutive = distinct == len(values) and values.max() - values.min() == len(values) - 1
    if consecutive and len(values) >= ROW_NUMBER_MIN_ROWS:
        return "a row number (consecutive unique integers)"
    return None


def _named_like_id(name: str) -> bool:
    if name.lower().startswith("unnamed:"):  # pandas' name for a saved index column
        return True
    words = re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)
    return bool(words) and words[-1].lower() in ID_WORDS


def _pick_target(
    columns: list[str], profiles: dict[str, ColumnProfile], target: str | None, source: str
) -> tuple[str, str | None]:
    """The target column and why it was picked (None when given)."""
    if target is not None:
        if target not in columns:
            raise InputError(
                f"--target: no column '{target}' in the data (columns: {', '.join(columns)})",
                source=source,
            )
        return target, None
    by_lower = {c.lower(): c for c in reversed(columns)}  # the first of equal names wins
    for candidate in TARGET_NAMES:
        if candidate in by_lower:
            return by_lower[candidate], "named like a target"
    usable = [c for c in columns if profiles[c].is_feature]
    if usable and usable[-1] != columns[-1]:
        return usable[-1], "the last column that is not an id or constant"
    return columns[-1], "the last column"


def _describe_target(
    column: pd.Series, reason: str | None, source: str
) -> tuple[str, dict[str, int] | None, tuple[float, float, float, float] | None]:
    """Task by data.py's own task: auto rule; class counts or the value range."""
    try:
        target = encode_target(column, "auto", None, source)
    except InputError as exc:
        if reason is None:
            raise
        raise InputError(
            f"{exc} (picked as the target: {reason}; name another with --target)"
        ) from None
    if target.classes is None:
        values = target.values
        stats = float(values.min()), float(values.max()), float(values.mean()), float(values.std())
        return "regression", None, stats
    counts = np.bincount(target.values, minlength=len(target.classes))
    return target.task, dict(zip(target.classes, map(int, counts), strict=True)), None


# --- choosing the starter's settings ----------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """Epochs, patience, batch size and trials sized so a first run takes minutes on a CPU."""

    epochs: int
    patience: int
    batch_size: int
    trials: int


def budget(rows: int, inputs: int, outputs: int = 1) -> Budget:
    """Small data: epochs are cheap and many are needed; large data: few epochs suffice. Then
    epochs, and if need be trials, are cut until the worst case fits SECONDS."""
    if rows < 1_000:
        plan = Budget(epochs=200, patience=20, batch_size=32, trials=30)
    elif rows < 10_000:
        plan = Budget(epochs=100, patience=15, batch_size=64, trials=30)
    elif rows < AUTO_SPLIT_ROWS:
        plan = Budget(epochs=40, patience=8, batch_size=128, trials=20)
    else:
        plan = Budget(epochs=10, patience=3, batch_size=256, trials=12)
    train_rows = rows * (0.6 if rows < AUTO_SPLIT_ROWS else 0.98)
    widths = hidden_choices(inputs)
    weights = sum(_weights(inputs, w, outputs) for w in widths) / len(widths)
    # ~8 flops per weight and example: forward, backward and the per-epoch scoring
    per_trial_epoch = 8 * (weights + OVERHEAD) * train_rows / FLOPS
    epochs = min(plan.epochs, max(MIN_EPOCHS, int(SECONDS / (per_trial_epoch * plan.trials))))
    trials = min(plan.trials, max(MIN_TRIALS, int(SECONDS / (per_trial_epoch * epochs))))
    patience = min(plan.patience, max(2, epochs // 3))
    return Budget(epochs=epochs, patience=patience, batch_size=plan.batch_size, trials=trials)


def _weights(inputs: int, widths: list[int], outputs: int) -> int:
    sizes = [inputs, *widths, outputs]
    return sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def hidden_choices(inputs: int) -> list[list[int]]:
    """One narrower, one wider layer, and two layers; the width about twice the inputs."""
    width = min(max(2 ** math.ceil(math.log2(max(2 * inputs, 1))), 16), 256)
    return [[width // 2], [width], [width, width // 2]]


def spec_name(path: Path) -> str:
    """A run name from the file name, within the spec's pattern [A-Za-z0-9][A-Za-z0-9._-]*."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem)
    name = re.sub(r"^[^A-Za-z0-9]+", "", name)[:100].rstrip("-.")
    return name or "starter"


def default_output(data: Path) -> Path:
    """Where `hpsearch init DATA` writes without -o: NAME.yaml in the current folder."""
    return Path(f"{spec_name(data)}.yaml")


def relative_source(data: Path, output: Path) -> str:
    """The data path as a spec at `output` names it: relative to the spec's folder."""
    try:
        return Path(os.path.relpath(data.resolve(), output.resolve().parent)).as_posix()
    except ValueError:  # on Windows, another drive has no relative path
        return data.resolve().as_posix()


# --- rendering --------------------------------------------------------------------------------


def starter_spec(data: Path, output: Path, target: str | None = None) -> str:
    """The commented starter spec for `data`, as YAML text for a file at `output`."""
    return render_spec(inspect_data(data, target), relative_source(data, output), output.name)


def render_spec(profile: DataProfile, source: str, spec_file: str = "SPEC") -> str:
    """The spec text: a header of what was seen, then every section with a why-comment."""
    plan = budget(profile.rows, profile.inputs, profile.outputs)
    lines = [
        *_header(profile, _shown(spec_file)),
        f"name: {_scalar(spec_name(profile.path))}",
        _line("seed: 0", "same seed: same split, same trials"),
        _line("device: auto", "a GPU when there is one, else the CPU"),
        *_data_section(profile, source),
        *_model_section(profile),
        *_train_section(plan),
        *_objective_lines(profile),
        *_search_section(profile, plan),
    ]
    return "\n".join(lines) + "\n"


def _header(profile: DataProfile, spec_file: str) -> list[str]:
    features = profile.features
    numeric = [c for c in features if c.kind == "numeric"]
    categorical = [c for c in features if c.kind == "categorical"]
    kinds = f"{len(numeric)} numeric, {len(categorical)} categorical"
    if categorical:
        kinds += f" ({_listed(f'{c.name} {c.distinct} values' for c in categorical)})"
    seen = [
        f"{profile.rows:,} rows; {len(features)} feature columns, "
        f"{profile.inputs} inputs after one-hot encoding",
        f"  {kinds}",
        *_target_lines(profile),
        _missing_line(profile),
    ]
    if profile.dropped:
        seen.append(
            f"dropped: {_listed(c.name for c in profile.dropped)} (reasons under data.drop)"
        )
    return [
        f"# Starter spec written by `hpsearch init` from {_shown(profile.path.name)}.",
        *(line for text in seen for line in _comment(f"  {text}", "")),
        f"# Check it: hpsearch validate {spec_file}   Run it: hpsearch run {spec_file}",
        "# Then read: hpsearch report. The budget is sized for a first run of a few minutes on a",
        "# laptop CPU; every line can be changed (hpsearch schema lists every key).",
        "",
    ]


def _target_lines(profile: DataProfile) -> list[str]:
    picked = f" (picked: {profile.target_reason})" if profile.target_reason else ""
    lines = [f"target: {_shown(profile.target)}{picked}, {_task_words(profile)}"]
    if profile.class_counts:
        total = sum(profile.class_counts.values())
        lines.append(
            "  classes: "
            + _listed(f"{k}: {n} ({n / total:.0%})" for k, n in profile.class_counts.items())
        )
        assert profile.balance is not None
        tilt = "imbalanced" if profile.imbalanced else "roughly balanced"
        lines.append(f"  {tilt}: the smallest class is {profile.balance:.0%} of the largest")
    if profile.target_range:
        low, high, mean, std = profile.target_range
        lines.append(f"  values from {low:.4g} to {high:.4g} (mean {mean:.4g}, std {std:.4g})")
    return lines


def _task_words(profile: DataProfile) -> str:
    if profile.task == "regression":
        return "regression"
    return f"{profile.task} classification ({len(profile.class_counts or {})} classes)"


def _missing_line(profile: DataProfile) -> str:
    missing = profile.missing
    if not missing:
        return "missing values: none"
    return "missing values: " + _listed(f"{name} {n}" for name, n in missing.items())


def _data_section(profile: DataProfile, source: str) -> list[str]:
    lines = ["data:", _line(f"  source: {_scalar(source)}", "relative to this file")]
    picked = (
        f"picked: {profile.target_reason}; change it to predict another column"
        if profile.target_reason
        else "the column to predict"
    )
    lines.append(_line(f"  target: {_scalar(profile.target)}", picked))
    rule = f"labels or <= {MAX_INTEGER_CLASSES} distinct whole numbers: classes"
    lines.append(_line("  task: auto", f"here: {profile.task} ({rule})"))
    lines += _drop_lines(profile)
    lines += _impute_lines(profile)
    lines.append(_line("  normalize: standard", "mean 0, std 1, from the train split only"))
    lines.append(_line("  split: auto", _split_words(profile.rows)))
    if profile.imbalanced:
        lines.append(
            _line(
                "  # weights: balanced",
                "uncomment to weight each class by its inverse frequency",
            )
        )
    return lines


def _drop_lines(profile: DataProfile) -> list[str]:
    if not profile.dropped:
        return []
    lines = [_line("  drop:", "never used as features:")]
    lines += [_line(f"    - {_scalar(c.name)}", c.drop_reason or "") for c in profile.dropped]
    return lines


def _impute_lines(profile: DataProfile) -> list[str]:
    missing = profile.missing
    if not missing:
        return []
    kinds = {c.name: c.kind for c in profile.features}
    numeric = any(kinds[name] == "numeric" for name in missing)
    # impute applies to numeric columns; categorical ones always take their most frequent value
    how = "median" if numeric else "most_frequent"
    why = "median resists outliers" if numeric else "the commonest label"
    listed = _listed(f"{name} {n}" for name, n in missing.items())
    return [
        *_comment(f"missing values (filled from train-split statistics): {listed}", "  "),
        "  # categorical columns always take their most frequent label",
        _line(f"  impute: {how}", why),
    ]


def _split_words(rows: int) -> str:
    if rows < AUTO_SPLIT_ROWS:
        return f"train/dev/test 60/20/20 (under {AUTO_SPLIT_ROWS:,} rows)"
    return f"train/dev/test 98/1/1 ({AUTO_SPLIT_ROWS:,} rows or more)"


def _model_section(profile: DataProfile) -> list[str]:
    middle = hidden_choices(profile.inputs)[1]
    return [
        "model:",
        _line(f"  hidden: {_flow(middle)}", "widths of one model; the search tries others"),
        _line("  activation: relu", ""),
        _line("  dropout: 0.0", "searched below"),
    ]


def _train_section(plan: Budget) -> list[str]:
    return [
        "train:",
        _line("  loss: auto", "cross_entropy / bce for classes, mse for numbers"),
        _line("  optimizer: adam", "forgiving of the learning rate"),
        _line("  lr: 1.0e-3", "searched below"),
        _line(f"  batch_size: {plan.batch_size}", ""),
        _line(f"  epochs: {plan.epochs}", "at most; early stopping usually ends sooner"),
        _line("  l2: 0.0", "searched below"),
        _line(
            f"  early_stopping: {{patience: {plan.patience}}}",
            f"stop after {plan.patience} epochs with no better dev loss; best weights kept",
        ),
    ]


def _objective_lines(profile: DataProfile) -> list[str]:
    if profile.task == "regression":
        why = "dev MSE of the standardized target: the share of variance left unexplained"
    else:
        why = "the misclassification rate on the dev split"
    # human_level_error is on the same scale as the objective's error
    return [
        _line("objective: {metric: dev_error}", why),
        _line(
            "# human_level_error: 0.05",
            "the error a person would make: turns on the avoidable-bias diagnosis",
        ),
    ]


def _search_section(profile: DataProfile, plan: Budget) -> list[str]:
    hidden = _flow(hidden_choices(profile.inputs))
    space = [
        (
            "    train.lr:      {low: 1.0e-4, high: 1.0e-1, log: true}",
            "10^r, r uniform in [-4, -1]",
        ),
        (f"    model.hidden:  {{choices: {hidden}}}", f"scaled to the {profile.inputs} inputs"),
        ("    model.dropout: {low: 0.0, high: 0.5}", "share of units zeroed in training"),
        (
            "    train.l2:      {low: 1.0e-6, high: 1.0e-2, log: true}",
            "weight decay, log scale too",
        ),
    ]
    return [
        "search:",
        _line("  strategy: random", "random points beat a grid when only a few knobs matter"),
        _line("  mode: caviar", "trials in parallel worker processes"),
        _line("  workers: auto", "one per CPU core"),
        _line(f"  trials: {plan.trials}", f"sized for {profile.rows:,} rows"),
        _line("  timeout: 15m", "no new trial starts after this, whatever the budget"),
        _line("  space:", "each entry overrides that field above, per trial"),
        "    # rates are searched on a log scale: each decade is as likely as the next",
        *_aligned(space),
    ]


# --- text helpers -----------------------------------------------------------------------------


def _line(text: str, comment: str, at: int = COMMENT_AT) -> str:
    """`text  # comment`, comments aligned at column `at`; above the text when too long."""
    if not comment:
        return text
    padded = text.ljust(max(at, len(text) + 2))
    if len(padded) + len(comment) + 2 <= WIDTH:
        return f"{padded}# {_shown(comment)}"
    indent = text[: len(text) - len(text.lstrip())]
    return f"{indent}# {_shown(comment)}\n{text}"


def _comment(text: str, indent: str) -> list[str]:
    """`text` as comment lines within WIDTH; its leading spaces indent every line, and lines
    after the first hang two spaces further."""
    body = _shown(text)
    lead = indent + "# " + " " * (len(body) - len(body.lstrip()))
    wrapped = textwrap.wrap(body.strip(), WIDTH - len(lead) - 2, break_on_hyphens=False)
    return [lead + wrapped[0], *(f"{lead}  {line}" for line in wrapped[1:])] if wrapped else []


def _aligned(rows: list[tuple[str, str]]) -> list[str]:
    """Lines whose comments share one column, after the longest text."""
    at = max(COMMENT_AT, *(len(text) + 2 for text, _ in rows))
    return [_line(text, comment, at) for text, comment in rows]


def _listed(items: Any) -> str:
    items = [_shown(item) for item in items]
    if len(items) > LISTED:
        return ", ".join(items[:LISTED]) + f", … ({len(items) - LISTED} more)"
    return ", ".join(items)


def _shown(value: Any) -> str:
    """A value on one comment line."""
    return " ".join(str(value).splitlines())


_PLAIN = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_ ./-]*(?<! )$")


def _scalar(value: str) -> str:
    """A string as a YAML scalar: plain when the spec loader reads it back unchanged, else
    quoted (a JSON string is a YAML double-quoted scalar)."""
    if _PLAIN.match(value) and yaml.load(value, Loader=SpecLoader) == value:
        return value
    return json.dumps(value)


def _flow(value: list[Any]) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip()


# --- writing ----------------------------------------------------------------------------------


def write_starter(data: Path, output: Path, target: str | None = None, force: bool = False) -> Path:
    """Write the starter spec for `data` to `output` (a file, or a folder to put NAME.yaml in)
    and return the file written. Refuses to replace an existing file unless `force`."""
    if output.is_dir():
        output = output / default_output(data)
    if output.exists() and not force:
        raise InputError(EXISTS, source=str(output))
    text = starter_spec(data, output, target)
    raw, lines = parse_yaml(text, str(output))
    spec_from_dict(raw, str(output), lines)  # a template bug must never reach the disk
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with output.open("w" if force else "x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        raise InputError(EXISTS, source=str(output)) from None  # created since the check above
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise InputError(f"cannot write the spec: {reason}", source=str(output)) from None
    return output
