"""Bias, variance and data-mismatch diagnosis of train/dev/test error rates.

Base layer: pure arithmetic and plain strings; no torch, no I/O, no rendering library. The CLI
(`hpsearch diagnose`) and the report call `diagnose` and show `summary_lines` or `to_dict()`.

Terms, as fractions of examples misclassified (0.035, never 3.5):
- bias = train - Bayes error; avoidable bias = train - human-level error;
- variance = dev - train; test gap = test - dev;
- a component is *high* when it exceeds the tolerance (default 0.01, one percentage point).
When the human-level error is unknown the bias is judged against Bayes error if given, else
against 0: an unknown reference is treated as perfect, so all of the train error counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

DEFAULT_TOLERANCE = 0.01
# Differences like 0.13 - 0.12 land a hair above 0.01 in binary floating point; a component
# exactly at the tolerance counts as low, as in the lecture's examples.
_FLOAT_SLACK = 1e-9
# Optimizers the remedies table suggests when training struggles, as users spell them.
_OPTIMIZERS = {"adam": "Adam", "rmsprop": "RMSprop", "momentum": "momentum"}

Focus = Literal["bias", "variance"]
Verdict = Literal["underfitting", "overfitting", "underfitting and overfitting", "right fit"]
BiasReference = Literal["human-level", "Bayes", "zero"]


def parse_error_rate(text: str | float) -> float:
    """Read an error rate written as a fraction (0.035, "0.035") or a percentage ("3.5%")."""
    if isinstance(text, bool):  # bool is an int subclass; True is not an error rate
        raise ValueError(f"error rate must be a number, got {text!r}")
    if isinstance(text, int | float):
        value, shown = float(text), repr(text)
    else:
        raw = str(text).strip()
        shown = repr(raw)
        percent = raw.endswith("%")
        try:
            value = float(raw.removesuffix("%").strip())
        except ValueError:
            raise ValueError(
                f"error rate {shown} is not a number; write a fraction like 0.035 or a percentage "
                "like 3.5%"
            ) from None
        if percent:
            value /= 100
    if not math.isfinite(value):
        raise ValueError(f"error rate {shown} must be a finite number")
    if value < 0:
        raise ValueError(f"error rate {shown} is negative; it must lie between 0 and 1")
    if value > 1:
        raise ValueError(
            f"error rate {shown} is above 1; write a fraction like 0.035, or add % for a percentage"
        )
    return value


@dataclass(frozen=True)
class GroupErrors:
    """Errors of the examples from one data distribution (a value of `data.group`)."""

    name: str
    train_error: float | None
    dev_error: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"train_error": self.train_error, "dev_error": self.dev_error}


@dataclass(frozen=True)
class Diagnosis:
    """The bias/variance reading of one model's errors, with what to try next."""

    train_error: float
    dev_error: float
    test_error: float | None
    human_level_error: float | None
    bayes_error: float | None
    tolerance: float
    bias: float | None
    avoidable_bias: float | None
    variance: float
    test_gap: float | None
    high_bias: bool
    high_variance: bool
    focus: Focus | None
    verdict: Verdict
    surpassed_human_level: bool
    recommendations: tuple[str, ...]
    groups: tuple[GroupErrors, ...] | None = None
    mismatch: bool | None = None

    @property
    def bias_reference(self) -> BiasReference:
        """Which error the bias judgement was measured from."""
        if self.human_level_error is not None:
            return "human-level"
        return "Bayes" if self.bayes_error is not None else "zero"

    @property
    def judged_bias(self) -> float:
        """The bias value that decided `high_bias`: avoidable bias, else bias, else train error."""
        if self.avoidable_bias is not None:
            return self.avoidable_bias
        return self.bias if self.bias is not None else self.train_error

    def to_dict(self) -> dict[str, Any]:
        """The `diagnosis` object of the JSON summary (DESIGN.md): fractions, never rounded."""
        out: dict[str, Any] = {
            "human_level_error": self.human_level_error,
            "bayes_error": self.bayes_error,
            "bias": self.bias,
            "avoidable_bias": self.avoidable_bias,
            "variance": self.variance,
            "high_bias": self.high_bias,
            "high_variance": self.high_variance,
            "focus": self.focus,
            "recommendations": list(self.recommendations),
            "train_error": self.train_error,
            "dev_error": self.dev_error,
            "test_error": self.test_error,
            "test_gap": self.test_gap,
            "tolerance": self.tolerance,
            "verdict": self.verdict,
            "surpassed_human_level": self.surpassed_human_level,
        }
        if self.groups is not None:
            out["groups"] = {g.name: g.to_dict() for g in self.groups}
            out["mismatch"] = self.mismatch
        return out


def diagnose(
    train_error: float,
    dev_error: float,
    *,
    test_error: float | None = None,
    human_level_error: float | None = None,
    bayes_error: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    groups: Mapping[str, Mapping[str, float | None]] | None = None,
    context: Mapping[str, Any] | None = None,
) -> Diagnosis:
    """Judge bias and variance of one model and recommend what to change next.

    `groups` maps each data distribution to its `train_error`/`dev_error`; `context` describes
    the run (hidden, epochs, stopped_epoch, early_stopping, dropout, l1, l2, optimizer, lr,
    train_size, init; all optional) so that recommendations can quote it.
    """
    train_error = _check_error("train_error", train_error)
    dev_error = _check_error("dev_error", dev_error)
    test_error = _check_optional_error("test_error", test_error)
    human_level_error = _check_optional_error("human_level_error", human_level_error)
    bayes_error = _check_optional_error("bayes_error", bayes_error)
    tolerance = _check_error("tolerance", tolerance)
    if (
        bayes_error is not None
        and human_level_error is not None
        and bayes_error > human_level_error
    ):
        raise ValueError(
            f"bayes_error ({bayes_error:g}) cannot exceed human_level_error "
            f"({human_level_error:g}): nobody, human or machine, beats the Bayes error"
        )

    bias = None if bayes_error is None else train_error - bayes_error
    avoidable_bias = None if human_level_error is None else train_error - human_level_error
    judged_bias = next(b for b in (avoidable_bias, bias, train_error) if b is not None)
    variance = dev_error - train_error
    test_gap = None if test_error is None else test_error - dev_error
    high_bias = _is_high(judged_bias, tolerance)
    high_variance = _is_high(variance, tolerance)
    surpassed = human_level_error is not None and min(train_error, dev_error) < human_level_error
    group_errors = None if groups is None else _group_errors(groups)

    draft = Diagnosis(
        train_error=train_error,
        dev_error=dev_error,
        test_error=test_error,
        human_level_error=human_level_error,
        bayes_error=bayes_error,
        tolerance=tolerance,
        bias=bias,
        avoidable_bias=avoidable_bias,
        variance=variance,
        test_gap=test_gap,
        high_bias=high_bias,
        high_variance=high_variance,
        focus=_focus(high_bias, high_variance),
        verdict=_verdict(high_bias, high_variance),
        surpassed_human_level=surpassed,
        recommendations=(),
        groups=group_errors,
        mismatch=None if group_errors is None else _has_mismatch(group_errors, tolerance),
    )
    # Recommendations read the finished numbers, so they are filled in last.
    return replace(draft, recommendations=tuple(recommend(draft, context or {})))


def mismatch_ordering(diagnosis: Diagnosis) -> list[tuple[str, float]]:
    """The lecture's chain human < train < dev[best group] < dev < dev[worst group] < test.

    Labels come in the chain's order (groups sorted by dev error, on the side of the overall dev
    error where they fall); unknown errors are left out. Under data mismatch the values climb
    steeply along the chain, from the best-served group to the worst.
    """
    d = diagnosis
    chain: list[tuple[str, float]] = []
    if d.human_level_error is not None:
        chain.append(("human-level", d.human_level_error))
    chain.append(("train", d.train_error))
    group_devs = sorted(
        ((g.name, g.dev_error) for g in d.groups or () if g.dev_error is not None),
        key=lambda item: item[1],
    )
    chain += [(f"dev[{name}]", err) for name, err in group_devs if err <= d.dev_error]
    chain.append(("dev", d.dev_error))
    chain += [(f"dev[{name}]", err) for name, err in group_devs if err > d.dev_error]
    if d.test_error is not None:
        chain.append(("test", d.test_error))
    return chain


def summary_lines(diagnosis: Diagnosis) -> list[str]:
    """Plain-text lines explaining the diagnosis, for the CLI and markdown reports."""
    d = diagnosis
    lines = [_errors_line(d)]
    if d.bias is not None and d.avoidable_bias is not None:
        # Both known: show bias for information; the avoidable bias carries the judgement.
        lines.append(
            f"Bias {_pct(d.bias)} (train {_pct(d.train_error)} − Bayes {_pct(d.bayes_error)})"
        )
    lines.append(_bias_line(d))
    lines.append(
        f"Variance {_pct(d.variance)} (dev {_pct(d.dev_error)} − train {_pct(d.train_error)}): "
        f"{_level(d.high_variance)}"
    )
    if d.test_gap is not None:
        worse = _is_high(d.test_gap, d.tolerance)
        lines.append(
            f"Test gap {_pct(d.test_gap)} (test {_pct(d.test_error)} − dev {_pct(d.dev_error)})"
            + (": high, the dev set may be overfit" if worse else "")
        )
    focus = {"bias": "focus on bias first", "variance": "focus on variance"}.get(d.focus or "")
    lines.append(f"Verdict: {d.verdict}" + (f" — {focus}" if focus else ""))
    if d.surpassed_human_level:
        lines.append("Surpassed human-level error")
    if d.groups:
        lines.extend(_group_lines(d))
    lines.append(f"(high = above the {_pct(d.tolerance)} tolerance)")
    if d.recommendations:
        lines.append("Recommendations:")
        lines.extend(f"  - {r}" for r in d.recommendations)
    return lines


# --- recommendations --------------------------------------------------------------------------


def recommend(diagnosis: Diagnosis, context: Mapping[str, Any]) -> list[str]:
    """What to change next, most useful first, quoting the run's `context` where it helps."""
    d = diagnosis
    out: list[str] = []
    if d.surpassed_human_level:
        out += _surpassed_notes(d)
    if d.high_bias:
        out += _bias_remedies(d, context)
    if d.mismatch:
        out += _mismatch_remedies(d)
    if d.high_variance and d.high_bias:
        # Fight bias before variance; the variance remedies wait for the next round.
        out.append(
            f"Once the bias is low, reduce the variance ({_pct(d.variance)}): more data, "
            "regularization (train.l2, model.dropout), early stopping (train.early_stopping)"
        )
    elif d.high_variance:
        out += _variance_remedies(context)
    if d.test_gap is not None and _is_high(d.test_gap, d.tolerance):
        out.append(
            f"Test error is {_pct(d.test_gap)} above dev: the search has likely overfit the dev "
            "set; use a bigger dev set (data.split)"
        )
    if not d.high_bias and not d.high_variance:
        out += _good_fit_notes(d)
    return out


def _bias_remedies(d: Diagnosis, ctx: Mapping[str, Any]) -> list[str]:
    hidden, epochs, stopped = ctx.get("hidden"), ctx.get("epochs"), ctx.get("stopped_epoch")
    stopped_early = epochs is not None and stopped is not None and stopped < epochs
    out = [
        f"Bigger network (model.hidden) — the best trial used hidden {_list(hidden)}"
        if hidden is not None
        else "Bigger or different network (model.hidden, model.activation)"
    ]
    if not stopped_early:  # early stopping already found where more epochs stop helping
        if epochs is not None and stopped is not None:
            out.append(
                f"Train longer (train.epochs) — the best trial ran all {epochs} epochs "
                "without stopping early"
            )
        elif epochs is not None:
            out.append(f"Train longer (train.epochs) — the best trial had {epochs}")
        else:
            out.append("Train longer (train.epochs)")
    lr = ctx.get("lr")
    out.append(
        f"Adapt the learning rate (train.lr, train.lr_schedule) — the best trial used lr {lr:g}"
        if lr is not None
        else "Adapt the learning rate (train.lr, train.lr_schedule)"
    )
    out += _optimizer_remedy(ctx.get("optimizer"))
    init = ctx.get("init")
    if init is None:
        out.append("Smarter initialization such as Xavier (model.init: xavier_uniform)")
    elif init == "default":
        out.append(
            "Smarter initialization (model.init: xavier_uniform) — the best trial used default"
        )
    if not d.high_variance:
        out += _loosen_regularization(ctx)
    out += [
        "Richer features: add attributes that tell the examples apart (new columns in the data)",
        "Redefine the cost so it measures the real goal (train.loss)",
        "Search capacity and training settings (search.space: model.hidden, train.lr, "
        "train.epochs)",
    ]
    if d.human_level_error is None:
        out.append(
            "Give the human-level error (human_level_error, --human-error): without it the whole "
            "train error counts as bias, even the part no model can avoid"
        )
    return out


def _optimizer_remedy(optimizer: str | None) -> list[str]:
    if optimizer is None:
        return ["Better optimizer: Adam, RMSprop or momentum (train.optimizer)"]
    used = "adam" if optimizer == "adamw" else optimizer
    if used not in ("sgd", "momentum", "nesterov", "rmsprop"):
        return []  # already on Adam: the learning rate is the lever left
    others = [shown for name, shown in _OPTIMIZERS.items() if name != used]
    choices = ", ".join(others[:-1]) + " or " + others[-1]
    return [f"Try {choices} (train.optimizer) — the best trial used {optimizer}"]


def _loosen_regularization(ctx: Mapping[str, Any]) -> list[str]:
    used = [f"{key} {ctx[key]:g}" for key in ("dropout", "l2", "l1") if ctx.get(key)]
    if not used:
        return []
    return [
        "Loosen regularization (model.dropout, train.l2, train.l1) — the best trial used "
        + ", ".join(used)
    ]


def _variance_remedies(ctx: Mapping[str, Any]) -> list[str]:
    size, hidden = ctx.get("train_size"), ctx.get("hidden")
    out = [
        "More training data, shuffled from all sources into every split (data.source, data.split)"
        + (f" — the best trial trained on {size} examples" if size is not None else "")
    ]
    out += _l2_remedy(ctx.get("l2"))
    out += _dropout_remedy(ctx.get("dropout"))
    early = ctx.get("early_stopping")  # a bool; None when unknown
    if early is None:
        out.append("Stop early when the dev loss starts rising (train.early_stopping)")
    elif not early:
        out.append(
            "Stop early when the dev loss starts rising (train.early_stopping) — the best trial "
            "ran without it"
        )
    out += [
        f"Smaller network (model.hidden) — the best trial used hidden {_list(hidden)}"
        if hidden is not None
        else "Smaller or different network (model.hidden)",
        "Augment the data or strengthen rare examples (data.weights)",
        "Search regularization settings (search.space: train.l2, model.dropout)",
    ]
    return out


def _l2_remedy(l2: float | None) -> list[str]:
    if l2 is None:
        return ["Add L2 or L1 regularization (train.l2, train.l1)"]
    if l2 == 0:
        return ["Add L2 regularization (train.l2) — the best trial used 0"]
    return [f"Raise L2 regularization (train.l2) — the best trial used {l2:g}"]


def _dropout_remedy(dropout: float | None) -> list[str]:
    if dropout is None:
        return ["Add dropout (model.dropout)"]
    if dropout == 0:
        return ["Add dropout (model.dropout) — the best trial used none"]
    if dropout < 0.5:  # past one half, more dropout mostly starves the network
        return [f"Raise dropout (model.dropout) — the best trial used {dropout:g}"]
    return []


def _mismatch_remedies(d: Diagnosis) -> list[str]:
    measured = sorted((g for g in d.groups or () if g.dev_error is not None), key=_dev_error)
    best, worst = measured[0], measured[-1]
    return [
        f"Data mismatch: dev error is {_pct(worst.dev_error)} on '{worst.name}' but "
        f"{_pct(best.dev_error)} on '{best.name}'; collect more data like '{worst.name}'",
        "Shuffle all groups together before splitting, so train, dev and test each hold every "
        "group (data.split)",
        f"Strengthen '{worst.name}' in training (data.weights: {{group: {{{worst.name}: 2}}}}), "
        "or balance the groups (data.weights: balanced)",
    ]


def _surpassed_notes(d: Diagnosis) -> list[str]:
    out = [
        "The model beats human-level error: progress gets harder from here, and human judgement "
        "no longer tells how much bias is left"
    ]
    if d.bias is not None:
        out.append(f"Judge what is left against Bayes error: train − Bayes = {_pct(d.bias)}")
    else:
        out.append("Estimate the Bayes error (bayes_error) to know how much bias could remain")
    return out


def _good_fit_notes(d: Diagnosis) -> list[str]:
    fits = f"bias and variance are both within the {_pct(d.tolerance)} tolerance"
    if d.test_gap is not None and _is_high(d.test_gap, d.tolerance):
        out = [f"Train and dev fit well ({fits}), but the test error does not follow"]
    else:
        out = [f"The model fits well: {fits}"]
    if d.bayes_error is not None and d.train_error < d.bayes_error:
        out.append(
            "Train error is below the Bayes error, which no model can beat: check bayes_error "
            "(or look for test or dev examples leaking into train)"
        )
    if d.test_error is None:
        out.append("Score the chosen model once on the test set to confirm the dev error")
    out.append("A bigger dev and test set (data.split) would tell smaller differences apart")
    return out


# --- small pure helpers -----------------------------------------------------------------------


def _check_error(name: str, value: float) -> float:
    # No upper bound: a regression "error" need not be a rate.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_optional_error(name: str, value: float | None) -> float | None:
    return None if value is None else _check_error(name, value)


def _group_errors(groups: Mapping[str, Mapping[str, float | None]]) -> tuple[GroupErrors, ...]:
    return tuple(
        GroupErrors(
            name=str(name),
            train_error=_check_optional_error(
                f"groups.{name}.train_error", errors.get("train_error")
            ),
            dev_error=_check_optional_error(f"groups.{name}.dev_error", errors.get("dev_error")),
        )
        for name, errors in groups.items()
    )


def _has_mismatch(groups: tuple[GroupErrors, ...], tolerance: float) -> bool:
    devs = [g.dev_error for g in groups if g.dev_error is not None]
    return len(devs) >= 2 and _is_high(max(devs) - min(devs), tolerance)


def _is_high(value: float, tolerance: float) -> bool:
    return value > tolerance + _FLOAT_SLACK


def _focus(high_bias: bool, high_variance: bool) -> Focus | None:
    if high_bias:
        return "bias"
    return "variance" if high_variance else None


def _verdict(high_bias: bool, high_variance: bool) -> Verdict:
    if high_bias and high_variance:
        return "underfitting and overfitting"
    if high_bias:
        return "underfitting"
    return "overfitting" if high_variance else "right fit"


def _dev_error(group: GroupErrors) -> float:
    return group.dev_error if group.dev_error is not None else math.inf


def _pct(value: float | None) -> str:
    if value is None:
        return "—"
    percent = value * 100
    # One decimal reads well; tiny non-zero values keep two significant digits instead of "0.0%".
    if percent != 0 and abs(percent) < 0.05:
        return f"{percent:.2g}%"
    return f"{percent:.1f}%"


def _level(high: bool) -> str:
    return "high" if high else "low"


def _list(values: Any) -> str:
    return (
        "[" + ", ".join(str(v) for v in values) + "]"
        if isinstance(values, list | tuple)
        else str(values)
    )


def _errors_line(d: Diagnosis) -> str:
    parts = [f"Train {_pct(d.train_error)}", f"dev {_pct(d.dev_error)}"]
    if d.test_error is not None:
        parts.append(f"test {_pct(d.test_error)}")
    if d.human_level_error is not None:
        parts.append(f"human-level {_pct(d.human_level_error)}")
    if d.bayes_error is not None:
        parts.append(f"Bayes {_pct(d.bayes_error)}")
    return "Errors: " + ", ".join(parts)


def _bias_line(d: Diagnosis) -> str:
    level = _level(d.high_bias)
    train = _pct(d.train_error)
    if d.avoidable_bias is not None:
        return (
            f"Avoidable bias {_pct(d.avoidable_bias)} (train {train} − human "
            f"{_pct(d.human_level_error)}): {level}"
        )
    if d.bias is not None:
        return f"Bias {_pct(d.bias)} (train {train} − Bayes {_pct(d.bayes_error)}): {level}"
    return f"Bias {train} (train {train} − 0, human-level error unknown): {level}"


def _group_lines(d: Diagnosis) -> list[str]:
    devs = ", ".join(f"{g.name} {_pct(g.dev_error)}" for g in d.groups or ())
    trains = ", ".join(f"{g.name} {_pct(g.train_error)}" for g in d.groups or ())
    verdict = "data mismatch" if d.mismatch else "no data mismatch"
    chain = " → ".join(f"{label} {_pct(value)}" for label, value in mismatch_ordering(d))
    return [
        f"Dev error by group: {devs} — {verdict}",
        f"Train error by group: {trains}",
        f"Ordering: {chain}",
    ]
