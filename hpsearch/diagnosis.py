"""Bias, variance and data-mismatch diagnosis of train/dev/test error rates.

Base layer: pure arithmetic and plain strings; no torch, no I/O, no rendering library. The CLI
(`hpsearch diagnose`) and the report call `diagnose` and show `summary_lines` or `to_dict()`.

Terms, as fractions of examples misclassified (0.035, never 3.5):
- bias = train - Bayes error; avoidable bias = train - human-level error;
- variance = dev - train; test gap = test - dev;
- a component is *high* when it exceeds the tolerance (default 0.01, one percentage point).
When the human-level error is unknown the bias is judged against Bayes error if given, else
against 0: an unknown reference is treated as perfect, so all of the train error counts.

With the split sizes (`samples`), each component is judged on its 95% interval rather than its
point value: *high* when the whole interval lies above the tolerance, *low* when it lies at or
below it, and *undetermined* ("can't tell") otherwise, with roughly how many examples would
tell. Error rates get Wilson intervals, differences of two rates Newcombe's interval from
them; regression errors (mean squared errors of the standardized target) normal intervals
from the spread of the per-example errors. Without sizes, the point rules apply, as in the
lecture's worked examples.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

DEFAULT_TOLERANCE = 0.01
# Differences like 0.13 - 0.12 land a hair above 0.01 in binary floating point; a component
# exactly at the tolerance counts as low, as in the lecture's examples.
_FLOAT_SLACK = 1e-9
# Optimizers the remedies table suggests when training struggles, as users spell them.
_OPTIMIZERS = {"adam": "Adam", "rmsprop": "RMSprop", "momentum": "momentum"}

Z95 = 1.959963984540054  # the two-sided 95% normal quantile
REGRESSION_TOLERANCE = 0.1  # regression: a tenth of the train error (at least 0.01)

Focus = Literal["bias", "variance"]
Verdict = Literal[
    "underfitting", "overfitting", "underfitting and overfitting", "right fit", "can't tell"
]
BiasReference = Literal["human-level", "Bayes", "zero", "none"]
Level = Literal["high", "low", "undetermined"]


@dataclass(frozen=True)
class Sample:
    """How an error was measured: on `n` examples. `sd` is the spread of the per-example
    errors (regression); None for a rate of mistakes, whose spread follows from the rate."""

    n: int
    sd: float | None = None

    def scaled(self, factor: float) -> Sample:
        return Sample(max(1, math.ceil(self.n * factor)), self.sd)


def wilson_interval(rate: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of an error rate measured on `n` examples."""
    if n <= 0:
        return (0.0, 1.0)
    rate = min(1.0, max(0.0, rate))
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def error_interval(error: float, sample: Sample) -> tuple[float, float]:
    """95% interval of one error: Wilson for a rate, normal for a mean squared error."""
    if sample.sd is None:
        return wilson_interval(error, sample.n)
    half = Z95 * sample.sd / math.sqrt(max(1, sample.n))
    return (max(0.0, error - half), error + half)


def difference_interval(
    a: float, sample_a: Sample, b: float, sample_b: Sample
) -> tuple[float, float]:
    """95% interval of a - b for errors measured on independent examples (Newcombe's hybrid
    score interval for two rates; a normal one for mean squared errors)."""
    if sample_a.sd is None and sample_b.sd is None:
        low_a, high_a = wilson_interval(a, sample_a.n)
        low_b, high_b = wilson_interval(b, sample_b.n)
        d = a - b
        return (
            d - math.sqrt((a - low_a) ** 2 + (high_b - b) ** 2),
            d + math.sqrt((high_a - a) ** 2 + (b - low_b) ** 2),
        )
    spread = math.sqrt(_estimate_variance(a, sample_a) + _estimate_variance(b, sample_b))
    return (a - b - Z95 * spread, a - b + Z95 * spread)


def _estimate_variance(error: float, sample: Sample) -> float:
    per_example = error * (1 - error) if sample.sd is None else sample.sd**2
    return per_example / max(1, sample.n)


@dataclass(frozen=True)
class Judgement:
    """One component judged against the tolerance: its value, its 95% interval (None without
    split sizes: the point rule), its level, and, when undetermined, roughly how many
    examples (of the split it names) would tell."""

    value: float
    interval: tuple[float, float] | None
    level: Level
    examples_needed: int | None = None
    split: str | None = None  # which split `examples_needed` counts

    @property
    def high(self) -> bool | None:
        return {"high": True, "low": False}.get(self.level)

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "interval": list(self.interval) if self.interval is not None else None,
            "level": self.level,
            "examples_needed": self.examples_needed,
            "split": self.split,
        }


def level_of(value: float, interval: tuple[float, float] | None, tolerance: float) -> Level:
    if interval is None:
        return "high" if _is_high(value, tolerance) else "low"
    low, high = interval
    if _is_high(low, tolerance):
        return "high"
    return "low" if not _is_high(high, tolerance) else "undetermined"


def _judge(
    value: float,
    interval_at: Callable[[float], tuple[float, float]] | None,
    tolerance: float,
    split: str | None,
    n: int | None,
) -> Judgement:
    """Judge `value`; `interval_at(factor)` is its interval were the samples `factor` times
    larger (None: no sizes). An undetermined judgement says how many examples would tell."""
    if interval_at is None:
        return Judgement(value, None, level_of(value, None, tolerance))
    interval = interval_at(1.0)
    level = level_of(value, interval, tolerance)
    if level != "undetermined" or n is None or abs(value - tolerance) < _FLOAT_SLACK:
        return Judgement(value, interval, level, split=split if level == "undetermined" else None)
    factor = 2.0
    while level_of(value, interval_at(factor), tolerance) == "undetermined" and factor < 1e7:
        factor *= 2
    low, high = factor / 2, factor
    for _ in range(30):  # the smallest factor that tells, to a few percent
        middle = (low + high) / 2
        if level_of(value, interval_at(middle), tolerance) == "undetermined":
            low = middle
        else:
            high = middle
    needed = math.ceil(high * n) if factor < 1e7 else None
    return Judgement(value, interval, level, needed, split)


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


GroupVerdict = Literal["mismatch", "harder", "fine", "undetermined"]
SPLITS = ("train", "dev", "test")
ALL_SPLITS = ("train", "train_dev", "dev", "test")
# A group is under-represented in train when its share there is below this part of its share
# of dev (absent, or rarer than half as often): the case where data mismatch can arise.
UNDER_REPRESENTED = 0.5


@dataclass(frozen=True)
class GroupErrors:
    """Errors of the examples from one data distribution (a value of `data.group`), the
    number of its rows in each split, and what its errors say (see `group_verdicts`)."""

    name: str
    train_error: float | None
    dev_error: float | None
    test_error: float | None = None
    counts: Mapping[str, int] | None = None  # rows in train / dev / test (/ train_dev)
    train_dev_error: float | None = None
    verdict: GroupVerdict = "undetermined"
    why: str = ""

    def error(self, split: str) -> float | None:
        return {
            "train": self.train_error,
            "train_dev": self.train_dev_error,
            "dev": self.dev_error,
            "test": self.test_error,
        }[split]

    def count(self, split: str) -> int | None:
        return None if self.counts is None else self.counts.get(split)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "train_error": self.train_error,
            "dev_error": self.dev_error,
            "test_error": self.test_error,
        }
        for split in SPLITS:
            out[f"n_{split}"] = self.count(split)
        if self.count("train_dev") is not None:
            out["train_dev_error"] = self.train_dev_error
            out["n_train_dev"] = self.count("train_dev")
        out["verdict"] = self.verdict
        return out


@dataclass(frozen=True)
class Diagnosis:
    """The bias/variance reading of one model's errors, with what to try next.

    `high_bias` / `high_variance` are None when the sample sizes cannot tell (see
    `judgements`, which holds each component's value, interval and level)."""

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
    high_bias: bool | None
    high_variance: bool | None
    focus: Focus | None
    verdict: Verdict
    surpassed_human_level: bool
    recommendations: tuple[str, ...]
    groups: tuple[GroupErrors, ...] | None = None
    mismatch: bool | None = None
    judgements: Mapping[str, Judgement] = field(default_factory=dict)
    samples: Mapping[str, Sample] | None = None
    regression: bool = False
    train_dev_error: float | None = None

    @property
    def bias_reference(self) -> BiasReference:
        """Which error the bias judgement was measured from."""
        if self.human_level_error is not None:
            return "human-level"
        if self.bayes_error is not None:
            return "Bayes"
        return "none" if self.regression else "zero"

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
            "judgements": {name: j.to_dict() for name, j in self.judgements.items()},
            "samples": None
            if self.samples is None
            else {name: {"n": s.n, "sd": s.sd} for name, s in self.samples.items()},
            "regression": self.regression,
            "train_dev_error": self.train_dev_error,
        }
        if self.groups is not None:
            out["groups"] = {g.name: g.to_dict() for g in self.groups}
            out["mismatch"] = self.mismatch
        return out


def samples_from(raw: Mapping[str, Any] | None) -> dict[str, Sample] | None:
    """`to_dict()["samples"]` back as samples (a summary read again)."""
    if not raw:
        return None
    return {name: Sample(int(s["n"]), s.get("sd")) for name, s in raw.items() if s and s["n"]}


def default_tolerance(train_error: float, regression: bool) -> float:
    """One percentage point; for regression a tenth of the train error, at least 0.01: one
    point of the target's variance is finer than a noisy target's errors can be told apart."""
    if not regression:
        return DEFAULT_TOLERANCE
    return max(DEFAULT_TOLERANCE, REGRESSION_TOLERANCE * train_error)


def diagnose(
    train_error: float,
    dev_error: float,
    *,
    test_error: float | None = None,
    human_level_error: float | None = None,
    bayes_error: float | None = None,
    tolerance: float | None = None,
    groups: Mapping[str, Mapping[str, float | None]] | None = None,
    context: Mapping[str, Any] | None = None,
    samples: Mapping[str, Sample] | None = None,
    regression: bool = False,
    train_dev_error: float | None = None,
) -> Diagnosis:
    """Judge bias and variance of one model and recommend what to change next.

    `samples` gives the size (and, for regression, the per-example spread) of the train, dev
    and test splits the errors were measured on; with them every component is judged on its
    interval. With `train_dev_error` (the train distribution, on rows never trained on) the
    variance is train_dev - train and the rest of dev - train is data mismatch,
    dev - train_dev. `groups` maps each data distribution to its `train_error`/`dev_error`;
    `context` describes the run (hidden, epochs, stopped_epoch, early_stopping, dropout, l1,
    l2, optimizer, lr, train_size, init; all optional) so that recommendations can quote it.
    """
    train_error = _check_error("train_error", train_error)
    dev_error = _check_error("dev_error", dev_error)
    test_error = _check_optional_error("test_error", test_error)
    human_level_error = _check_optional_error("human_level_error", human_level_error)
    bayes_error = _check_optional_error("bayes_error", bayes_error)
    if tolerance is None:
        tolerance = default_tolerance(train_error, regression)
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
    train_dev_error = _check_optional_error("train_dev_error", train_dev_error)
    samples = dict(samples or {})
    train_s = samples.get("train")

    bias = None if bayes_error is None else train_error - bayes_error
    avoidable_bias = None if human_level_error is None else train_error - human_level_error
    reference = next((r for r in (human_level_error, bayes_error) if r is not None), None)
    variance = dev_error - train_error
    if train_dev_error is not None:
        variance = train_dev_error - train_error
    test_gap = None if test_error is None else test_error - dev_error

    judgements: dict[str, Judgement] = {}
    if reference is None and regression:  # no model reaches 0: nothing to measure bias from
        judgements["bias"] = Judgement(train_error, None, "undetermined")
    else:
        shift = reference or 0.0
        at = None
        if train_s is not None:

            def at(f: float) -> tuple[float, float]:
                low, high = error_interval(train_error, train_s.scaled(f))
                return (low - shift, high - shift)

        judgements["bias"] = _judge(
            train_error - shift, at, tolerance, "train", train_s.n if train_s else None
        )
    errors = {"train": train_error, "train_dev": train_dev_error, "dev": dev_error}
    errors["test"] = test_error

    def gap(upper: str, lower: str) -> Judgement:
        """errors[upper] - errors[lower], two splits of different examples."""
        a, b, sample_a, sample_b = (
            errors[upper],
            errors[lower],
            samples.get(upper),
            samples.get(lower),
        )
        at = _difference_at(a, sample_a, b, sample_b)
        return _judge(a - b, at, tolerance, upper, sample_a.n if sample_a else None)

    if train_dev_error is None:
        judgements["variance"] = gap("dev", "train")
    else:
        judgements["variance"] = gap("train_dev", "train")
        judgements["mismatch"] = gap("dev", "train_dev")
    if test_gap is not None:
        judgements["test_gap"] = gap("test", "dev")
    high_bias = judgements["bias"].high
    high_variance = judgements["variance"].high
    surpassed = False
    if avoidable_bias is not None:
        interval = judgements["bias"].interval
        surpassed = (interval[1] if interval else avoidable_bias) < -_FLOAT_SLACK
    group_errors, mismatch = None, None
    if groups is not None:
        group_errors, mismatch = group_verdicts(_group_errors(groups), tolerance)
    if "mismatch" in judgements:  # dev against the train distribution on unseen rows
        readings = [judgements["mismatch"].high]
        if group_errors is not None:
            readings.append(mismatch)
        mismatch = True if True in readings else (None if None in readings else False)

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
        mismatch=mismatch,
        judgements=judgements,
        samples=samples or None,
        regression=regression,
        train_dev_error=train_dev_error,
    )
    # Recommendations read the finished numbers, so they are filled in last.
    return replace(draft, recommendations=tuple(recommend(draft, context or {})))


def _difference_at(
    a: float, sample_a: Sample | None, b: float, sample_b: Sample | None
) -> Callable[[float], tuple[float, float]] | None:
    if sample_a is None or sample_b is None:
        return None
    return lambda f: difference_interval(a, sample_a.scaled(f), b, sample_b.scaled(f))


def mismatch_ordering(diagnosis: Diagnosis) -> list[tuple[str, float]]:
    """The lecture's chain of errors — human level, train, dev per group, dev, test — in the
    order of their real values (lowest first); unknown errors are left out. Under data
    mismatch a group's dev error stands far up the chain, above the train errors."""
    d = diagnosis
    chain: list[tuple[str, float]] = []
    if d.human_level_error is not None:
        chain.append(("human-level", d.human_level_error))
    chain.append(("train", d.train_error))
    chain += [(f"dev[{g.name}]", g.dev_error) for g in d.groups or () if g.dev_error is not None]
    chain.append(("dev", d.dev_error))
    if d.test_error is not None:
        chain.append(("test", d.test_error))
    return sorted(chain, key=lambda item: item[1])  # sorted() is stable: ties keep chain order


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
    if d.train_dev_error is None:
        lines.append(
            f"Variance {_pct(d.variance)} (dev {_pct(d.dev_error)} − train "
            f"{_pct(d.train_error)}): {_judged_text(d.judgements['variance'])}"
        )
    else:
        lines.append(
            f"Variance {_pct(d.variance)} (train_dev {_pct(d.train_dev_error)} − train "
            f"{_pct(d.train_error)}): {_judged_text(d.judgements['variance'])}"
        )
        mismatch = d.judgements["mismatch"]
        lines.append(
            f"Data mismatch {_pct(mismatch.value)} (dev {_pct(d.dev_error)} − train_dev "
            f"{_pct(d.train_dev_error)}): {_judged_text(mismatch)}"
        )
    if d.test_gap is not None:
        gap = d.judgements["test_gap"]
        said = {"high": ": high, the dev set may be overfit", "low": ""}.get(
            gap.level, f": {_judged_text(gap)}"
        )
        if gap.interval is not None and gap.level != "undetermined":
            said += f" (95% interval {_interval_text(gap.interval)})"
        lines.append(
            f"Test gap {_pct(d.test_gap)} (test {_pct(d.test_error)} − dev {_pct(d.dev_error)})"
            + said
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
    out += _group_remedies(d)
    mismatch = d.judgements.get("mismatch")
    if mismatch is not None and mismatch.level == "high":
        out.append(
            f"Data mismatch {_pct(mismatch.value)}: the dev (and test) examples come from "
            "another mix of distributions than train. Do error analysis on dev to see how they "
            "differ, then collect or synthesize training data like them, or move some of them "
            "into train (keeping dev and test from the target distribution)"
        )
    if d.high_variance and d.high_bias:
        # Fight bias before variance; the variance remedies wait for the next round.
        out.append(
            f"Once the bias is low, reduce the variance ({_pct(d.variance)}): more data, "
            "regularization (train.l2, model.dropout), early stopping (train.early_stopping)"
        )
    elif d.high_variance:
        out += _variance_remedies(context)
    if _test_gap_high(d):
        out.append(
            f"Test error is {_pct(d.test_gap)} above dev: the search has likely overfit the dev "
            "set; use a bigger dev set (data.split)"
        )
    if d.high_bias is False and d.high_variance is False:
        out += _good_fit_notes(d)
    out += _undetermined_notes(d)
    return out


def _test_gap_high(d: Diagnosis) -> bool:
    gap = d.judgements.get("test_gap")
    return gap is not None and gap.level == "high"


def _undetermined_notes(d: Diagnosis) -> list[str]:
    """What the sample sizes cannot tell, and how many examples would."""
    out = []
    for name, label in (("bias", "the bias"), ("variance", "the variance")):
        judgement = d.judgements.get(name)
        if judgement is None or judgement.level != "undetermined":
            continue
        if judgement.interval is None:
            out.append(
                "Give the human-level error (human_level_error) or the Bayes error "
                "(bayes_error) to judge the bias: no model reaches zero error on a noisy "
                "regression target"
            )
        elif judgement.examples_needed is not None:
            now = d.samples[judgement.split].n if d.samples else None
            out.append(
                f"With more data the diagnosis could tell {label}: about "
                f"{judgement.examples_needed:,} {judgement.split} examples (now {now:,}) "
                "would separate it from the tolerance (data.split, or more data)"
            )
    return out


def _searched(ctx: Mapping[str, Any], *paths: str) -> list[str]:
    return [p for p in paths if p in (ctx.get("searched") or ())]


def _unsearched(ctx: Mapping[str, Any], *paths: str) -> list[str]:
    return [p for p in paths if p not in (ctx.get("searched") or ())]


def _size_keys(ctx: Mapping[str, Any]) -> str:
    return "model.layers, model.units" if ctx.get("sizing") == "layers" else "model.hidden"


def _network_text(ctx: Mapping[str, Any], word: str) -> str:
    """'Bigger network (model.hidden) — ...', naming the keys the run sizes its network by,
    and the searched range when the search already varies them."""
    hidden, keys = ctx.get("hidden"), _size_keys(ctx)
    searched = _searched(ctx, *keys.split(", "))
    where = f"widen search.space[{', '.join(searched)}]" if searched else keys
    if hidden is None:
        return f"{word} or different network ({where}, model.activation)"
    if ctx.get("sizing") == "layers" and hidden:
        used = f"{len(hidden)} layers of {hidden[0]} units"
    else:
        used = f"hidden {_list(hidden)}"
    return f"{word} network ({where}) — the best trial used {used}"


def _bias_remedies(d: Diagnosis, ctx: Mapping[str, Any]) -> list[str]:
    epochs, stopped = ctx.get("epochs"), ctx.get("stopped_epoch")
    stopped_early = epochs is not None and stopped is not None and stopped < epochs
    out = [_network_text(ctx, "Bigger")]
    if not stopped_early:  # early stopping already found where more epochs stop helping
        if epochs is not None and stopped is not None:
            how = (
                "with early stopping off"
                if ctx.get("early_stopping") is False
                else "without stopping early"
            )
            out.append(
                f"Train longer (train.epochs) — the best trial ran all {epochs} epochs {how}"
            )
        elif epochs is not None:
            out.append(f"Train longer (train.epochs) — the best trial had {epochs}")
        else:
            out.append("Train longer (train.epochs)")
    lr = ctx.get("lr")
    keys = (
        "widen search.space[train.lr], train.lr_schedule"
        if _searched(ctx, "train.lr")
        else ("train.lr, train.lr_schedule")
    )
    out.append(
        f"Adapt the learning rate ({keys}) — the best trial used lr {lr:g}"
        if lr is not None
        else f"Adapt the learning rate ({keys})"
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
    ]
    unsearched = _unsearched(ctx, *_size_keys(ctx).split(", "), "train.lr", "train.epochs")
    if unsearched:
        out.append(f"Search capacity and training settings (search.space: {', '.join(unsearched)})")
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
    size = ctx.get("train_size")
    out = [
        "More training data, shuffled from all sources into every split (data.source, data.split)"
        + (f" — the best trial trained on {size} examples" if size is not None else "")
    ]
    out += _l2_remedy(ctx.get("l2"), bool(_searched(ctx, "train.l2")))
    out += _dropout_remedy(ctx.get("dropout"), bool(_searched(ctx, "model.dropout")))
    early = ctx.get("early_stopping")  # a bool; None when unknown
    if early is None:
        out.append("Stop early when the dev loss starts rising (train.early_stopping)")
    elif not early:
        out.append(
            "Stop early when the dev loss starts rising (train.early_stopping) — the best trial "
            "ran without it"
        )
    out += [
        _network_text(ctx, "Smaller"),
        "Augment the data or strengthen rare examples (data.weights)",
    ]
    unsearched = _unsearched(ctx, "train.l2", "model.dropout")
    if unsearched:
        out.append(f"Search regularization settings (search.space: {', '.join(unsearched)})")
    return out


def _l2_remedy(l2: float | None, searched: bool = False) -> list[str]:
    if searched:
        return [f"Widen search.space[train.l2] upwards — the best trial used {l2 or 0:g}"]
    if l2 is None:
        return ["Add L2 or L1 regularization (train.l2, train.l1)"]
    if l2 == 0:
        return ["Add L2 regularization (train.l2) — the best trial used 0"]
    return [f"Raise L2 regularization (train.l2) — the best trial used {l2:g}"]


def _dropout_remedy(dropout: float | None, searched: bool = False) -> list[str]:
    if searched:
        return [f"Widen search.space[model.dropout] upwards — the best trial used {dropout or 0:g}"]
    if dropout is None:
        return ["Add dropout (model.dropout)"]
    if dropout == 0:
        return ["Add dropout (model.dropout) — the best trial used none"]
    if dropout < 0.5:  # past one half, more dropout mostly starves the network
        return [f"Raise dropout (model.dropout) — the best trial used {dropout:g}"]
    return []


def _weights_snippet(groups: tuple[GroupErrors, ...], strengthened: list[str]) -> str:
    """A `data.weights` value naming every group (the spec refuses one that leaves some out)."""
    weights = ", ".join(
        f"{_yaml_key(g.name)}: {2 if g.name in strengthened else 1}" for g in groups
    )
    return f"data.weights: {{group: {{{weights}}}}}"


def _yaml_key(name: str) -> str:
    """A group name as a YAML key that reads back as that very string (`yes`, `null`, `1e3`
    and names with `:` or `#` are quoted)."""
    plain = name.replace("_", "").replace("-", "").isalnum() and not name[:1].isdigit()
    reserved = name.lower() in ("yes", "no", "on", "off", "true", "false", "null", "y", "n", "~")
    return name if plain and not reserved else json.dumps(name)


def _group_remedies(d: Diagnosis) -> list[str]:
    groups = d.groups or ()
    mismatched = [g for g in groups if g.verdict == "mismatch"]
    harder = [g for g in groups if g.verdict == "harder"]
    out = []
    for g in mismatched:
        out.append(
            f"Data mismatch on '{g.name}' ({g.why}): collect more training data like "
            f"'{g.name}', or train on all distributions shuffled into every split"
        )
    if mismatched:
        out.append(
            "Strengthen the mismatched groups in training ("
            + _weights_snippet(groups, [g.name for g in mismatched])
            + ")"
        )
    for g in harder:
        out.append(
            f"'{g.name}' is harder than the other groups ({g.why}), though it is in train like "
            "in dev: not a data mismatch. Look at that group's data — noisier labels or coarser "
            "measurements raise its Bayes error — add features that tell its examples apart, "
            "or accept a higher error for it"
        )
    return out


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
    if _test_gap_high(d):
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


def _group_errors(groups: Mapping[str, Mapping[str, Any]]) -> tuple[GroupErrors, ...]:
    out = []
    for name, errors in groups.items():
        checked = {
            split: _check_optional_error(
                f"groups.{name}.{split}_error", errors.get(f"{split}_error")
            )
            for split in ALL_SPLITS
        }
        counts = {s: int(errors[f"n_{s}"]) for s in ALL_SPLITS if errors.get(f"n_{s}") is not None}
        out.append(
            GroupErrors(
                str(name),
                checked["train"],
                checked["dev"],
                checked["test"],
                counts or None,
                train_dev_error=checked["train_dev"],
            )
        )
    return tuple(out)


def _pooled(groups: list[GroupErrors], split: str) -> tuple[float, int | None] | None:
    """The error of `groups` taken together on `split` (weighted by their rows when known)."""
    measured = [g for g in groups if g.error(split) is not None]
    if not measured:
        return None
    counts = [g.count(split) for g in measured]
    if all(c for c in counts):
        total = sum(counts)
        return sum(g.error(split) * c for g, c in zip(measured, counts, strict=True)) / total, total
    return sum(g.error(split) for g in measured) / len(measured), None


def _gap(
    group: GroupErrors, split: str, reference: tuple[float, int | None] | None, tolerance: float
) -> Judgement | None:
    """The group's error on `split` minus a reference error, judged against the tolerance."""
    error, n = group.error(split), group.count(split)
    if error is None or reference is None:
        return None
    other, other_n = reference
    at = None
    if n and other_n:
        mine, theirs = Sample(n), Sample(other_n)

        def at(f: float) -> tuple[float, float]:
            return difference_interval(error, mine.scaled(f), other, theirs.scaled(f))

    return _judge(error - other, at, tolerance, split, n)


def _share(group: GroupErrors, groups: tuple[GroupErrors, ...], split: str) -> float | None:
    counts = [g.count(split) for g in groups]
    if any(c is None for c in counts) or not sum(counts):
        return None
    return group.count(split) / sum(counts)


def group_verdicts(
    groups: tuple[GroupErrors, ...], tolerance: float
) -> tuple[tuple[GroupErrors, ...], bool | None]:
    """Each group's verdict, and whether the data show a mismatch (None: can't tell).

    Data mismatch needs train and dev to hold different mixes of the distributions: only a
    group absent from train, or under-represented there against dev, can be mismatched, when
    its dev error is clearly above what the training distribution shows. A group that is in
    train like in dev but whose errors are clearly above the other groups' — on train, or on
    dev — is `harder` (a higher noise floor, less separable data), not a mismatch. Clearly not
    above: `fine`; too few rows to tell: `undetermined`. With hpsearch's own splits every
    group is in every split in the same proportion, so a gap between groups is never called
    a mismatch."""
    judged, mismatch_known, mismatched = [], True, False
    for group in groups:
        others = [g for g in groups if g is not group]
        train_share, dev_share = _share(group, groups, "train"), _share(group, groups, "dev")
        under = (
            train_share is not None
            and dev_share is not None
            and train_share < UNDER_REPRESENTED * dev_share
        )
        if not others:
            judged.append(replace(group, verdict="fine", why="the only group"))
            continue
        if under:
            # what the training distribution shows: train_dev when there is one (the train
            # distribution on examples it did not learn), else the train error of all groups
            shown = _pooled(list(groups), "train_dev") or _pooled(list(groups), "train")
            gap = _gap(group, "dev", shown, tolerance)
            level = gap.level if gap else "undetermined"
            verdict = {"high": "mismatch", "low": "fine"}.get(level, "undetermined")
            mismatched |= verdict == "mismatch"
            mismatch_known &= verdict != "undetermined"
            why = "under-represented in train" + (
                f"; dev error {_pct(gap.value)} above the training distribution's" if gap else ""
            )
            judged.append(replace(group, verdict=verdict, why=why))
            continue
        train_gap = _gap(group, "train", _pooled(others, "train"), tolerance)
        dev_gap = _gap(group, "dev", _pooled(others, "dev"), tolerance)
        levels = [g.level for g in (train_gap, dev_gap) if g is not None]
        if train_gap is not None and train_gap.level == "high":
            verdict, why = "harder", f"train error {_pct(train_gap.value)} above the others'"
        elif dev_gap is not None and dev_gap.level == "high":
            verdict, why = "harder", f"dev error {_pct(dev_gap.value)} above the others'"
        elif levels and all(level == "low" for level in levels):
            verdict, why = "fine", "errors like the other groups'"
        else:
            verdict, why = "undetermined", "too few rows to tell it from the other groups"
        judged.append(replace(group, verdict=verdict, why=why))
    mismatch = True if mismatched else (False if mismatch_known else None)
    return tuple(judged), mismatch


def _is_high(value: float, tolerance: float) -> bool:
    return value > tolerance + _FLOAT_SLACK


def _focus(high_bias: bool | None, high_variance: bool | None) -> Focus | None:
    if high_bias:
        return "bias"
    return "variance" if high_variance else None


def _verdict(high_bias: bool | None, high_variance: bool | None) -> Verdict:
    if high_bias and high_variance:
        return "underfitting and overfitting"
    if high_bias:
        return "underfitting"
    if high_variance:
        return "overfitting"
    if high_bias is False and high_variance is False:
        return "right fit"
    return "can't tell"


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


def _interval_text(interval: tuple[float, float]) -> str:
    return f"{_pct(interval[0])} to {_pct(interval[1])}"


def _judged_text(judgement: Judgement) -> str:
    """'high', 'low', or "can't tell with N dev examples (...); about M would tell"."""
    if judgement.level != "undetermined":
        text = judgement.level
        if judgement.interval is not None:
            text += f" (95% interval {_interval_text(judgement.interval)})"
        return text
    if judgement.interval is None:
        return "can't tell"
    text = f"can't tell (95% interval {_interval_text(judgement.interval)})"
    if judgement.examples_needed is not None and judgement.split:
        text += f"; about {judgement.examples_needed:,} {judgement.split} examples would tell"
    return text


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
    level = _judged_text(d.judgements["bias"])
    train = _pct(d.train_error)
    if d.bias_reference == "none":
        return (
            f"Bias: can't tell (train {train}; no human-level or Bayes error to measure it "
            "from, and a noisy regression target never reaches zero)"
        )
    if d.avoidable_bias is not None:
        return (
            f"Avoidable bias {_pct(d.avoidable_bias)} (train {train} − human "
            f"{_pct(d.human_level_error)}): {level}"
        )
    if d.bias is not None:
        return f"Bias {_pct(d.bias)} (train {train} − Bayes {_pct(d.bayes_error)}): {level}"
    return f"Bias {train} (train {train} − 0, human-level error unknown): {level}"


def mismatch_text(d: Diagnosis) -> str:
    if d.mismatch:
        return "data mismatch"
    if d.mismatch is None:
        return "data mismatch: can't tell"
    return "no data mismatch"


def _group_lines(d: Diagnosis) -> list[str]:
    devs = ", ".join(f"{g.name} {_pct(g.dev_error)}" for g in d.groups or ())
    trains = ", ".join(f"{g.name} {_pct(g.train_error)}" for g in d.groups or ())
    verdicts = ", ".join(f"{g.name} {g.verdict}" for g in d.groups or ())
    chain = " ≤ ".join(f"{label} {_pct(value)}" for label, value in mismatch_ordering(d))
    return [
        f"Dev error by group: {devs} — {mismatch_text(d)}",
        f"Train error by group: {trains}",
        f"Groups: {verdicts}",
        f"Ordering: {chain}",
    ]
