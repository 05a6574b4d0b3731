"""Bias/variance/mismatch diagnosis: pure arithmetic, checked against the lecture's tables."""

from __future__ import annotations

import json

import pytest

from hpsearch.diagnosis import (
    Diagnosis,
    diagnose,
    mismatch_ordering,
    parse_error_rate,
    summary_lines,
)

DESIGN_KEYS = {
    "human_level_error",
    "bayes_error",
    "bias",
    "avoidable_bias",
    "variance",
    "high_bias",
    "high_variance",
    "focus",
    "recommendations",
}
EXTRA_KEYS = {
    "train_error",
    "dev_error",
    "test_error",
    "tolerance",
    "verdict",
    "surpassed_human_level",
    "test_gap",
    "judgements",
    "samples",
    "regression",
    "train_dev_error",
}

# A run that left every bias and variance remedy open.
PLAIN_RUN = {
    "hidden": [64],
    "epochs": 100,
    "stopped_epoch": 100,
    "early_stopping": False,
    "dropout": 0.0,
    "l2": 0.0,
    "optimizer": "sgd",
    "lr": 0.1,
    "train_size": 1078,
    "init": "default",
}


def pct(value: float) -> float:
    return value / 100


# --- the lecture's model A-D table (Bayes 0.5%, human 0.7%) -----------------------------------

# The lecture prints 0.8% variance for model B, but its own dev - train is 4.0 - 3.5 = 0.5.
MODELS = [
    pytest.param(3.5, 7.8, 3.0, 2.8, 4.3, True, True, "bias", id="A-high-bias-high-variance"),
    pytest.param(3.5, 4.0, 3.0, 2.8, 0.5, True, False, "bias", id="B-high-bias"),
    pytest.param(1.0, 5.0, 0.5, 0.3, 4.0, False, True, "variance", id="C-high-variance"),
    pytest.param(0.8, 1.0, 0.3, 0.1, 0.2, False, False, None, id="D-well-trained"),
]


@pytest.mark.parametrize(
    ("train", "dev", "bias", "avoidable", "variance", "high_bias", "high_variance", "focus"),
    MODELS,
)
def test_lecture_models(train, dev, bias, avoidable, variance, high_bias, high_variance, focus):
    d = diagnose(pct(train), pct(dev), human_level_error=pct(0.7), bayes_error=pct(0.5))
    assert d.bias == pytest.approx(pct(bias))
    assert d.avoidable_bias == pytest.approx(pct(avoidable))
    assert d.variance == pytest.approx(pct(variance))
    assert (d.high_bias, d.high_variance, d.focus) == (high_bias, high_variance, focus)


def test_model_d_is_a_right_fit():
    d = diagnose(0.008, 0.010, human_level_error=0.007, bayes_error=0.005)
    assert d.verdict == "right fit"
    assert any("fits well" in r for r in d.recommendations)


# --- the lecture's four train/dev examples (human level ~ 0) ----------------------------------

EXAMPLES = [
    pytest.param(1, 12, False, True, "overfitting", id="ex1-train1-dev12-overfitting"),
    pytest.param(12, 13, True, False, "underfitting", id="ex2-train12-dev13-underfitting"),
    pytest.param(12, 20, True, True, "underfitting and overfitting", id="ex3-train12-dev20-both"),
    pytest.param(1, 2, False, False, "right fit", id="ex4-train1-dev2-right-fit"),
]


@pytest.mark.parametrize("human", [0.0, None], ids=["human-0", "human-unknown"])
@pytest.mark.parametrize(("train", "dev", "high_bias", "high_variance", "verdict"), EXAMPLES)
def test_lecture_examples(train, dev, high_bias, high_variance, verdict, human):
    d = diagnose(pct(train), pct(dev), human_level_error=human)
    assert (d.high_bias, d.high_variance, d.verdict) == (high_bias, high_variance, verdict)
    overfitting = verdict in ("overfitting", "underfitting and overfitting")
    underfitting = verdict.startswith("underfitting")
    assert (overfitting, underfitting) == (high_variance, high_bias)


def test_unknown_human_level_judges_train_error_against_zero_but_keeps_avoidable_bias_null():
    d = diagnose(0.012, 0.015)
    assert d.avoidable_bias is None and d.bias is None
    assert d.bias_reference == "zero"
    assert d.judged_bias == pytest.approx(0.012)
    assert d.high_bias
    assert d.to_dict()["avoidable_bias"] is None
    assert any("human_level_error" in r for r in d.recommendations)


def test_bayes_error_alone_judges_bias():
    d = diagnose(0.012, 0.015, bayes_error=0.005)
    assert d.bias == pytest.approx(0.007)
    assert d.bias_reference == "Bayes"
    assert not d.high_bias


def test_component_exactly_at_tolerance_is_low():
    # 0.13 - 0.12 is 0.010000000000000009 in floating point; still "low" as the lecture says.
    assert not diagnose(0.12, 0.13, human_level_error=0.11).high_bias
    assert not diagnose(0.12, 0.13).high_variance


@pytest.mark.parametrize(
    ("tolerance", "high_variance"),
    [(0.01, True), (0.05, False), (0.0, True)],
    ids=["default-1pt", "loose-5pt", "zero"],
)
def test_tolerance_is_configurable(tolerance, high_variance):
    d = diagnose(0.02, 0.04, human_level_error=0.02, tolerance=tolerance)
    assert d.high_variance is high_variance
    assert d.tolerance == tolerance


# --- surpassing human level -------------------------------------------------------------------


def test_surpassing_human_level_gives_negative_avoidable_bias_and_says_so():
    d = diagnose(0.004, 0.021, human_level_error=0.01)
    assert d.avoidable_bias == pytest.approx(-0.006)
    assert d.surpassed_human_level
    assert not d.high_bias and d.high_variance and d.focus == "variance"
    text = " ".join(d.recommendations)
    assert "human-level" in text and "harder" in text
    assert "bayes_error" in text


def test_surpassing_human_level_with_bayes_known_points_at_bayes():
    d = diagnose(0.003, 0.006, human_level_error=0.005, bayes_error=0.001)
    assert d.surpassed_human_level
    assert any("Bayes" in r and "0.2%" in r for r in d.recommendations)


def test_not_surpassed_when_human_level_unknown():
    assert not diagnose(0.0, 0.0).surpassed_human_level


# --- test set ---------------------------------------------------------------------------------


def test_test_error_clearly_worse_than_dev_flags_dev_overfitting():
    d = diagnose(0.01, 0.015, test_error=0.05, human_level_error=0.01)
    assert d.test_gap == pytest.approx(0.035)
    assert any("overfit the dev set" in r and "data.split" in r for r in d.recommendations)


def test_test_error_close_to_dev_is_not_flagged():
    d = diagnose(0.01, 0.015, test_error=0.02, human_level_error=0.01)
    assert d.test_gap == pytest.approx(0.005)
    assert not any("overfit the dev set" in r for r in d.recommendations)
    assert not any("test set to confirm" in r for r in d.recommendations)


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [(0.035, 0.035), ("0.035", 0.035), ("3.5%", 0.035), (" 3.5 % ", 0.035), ("0", 0.0), (1, 1.0)],
    ids=["float", "string-fraction", "percent", "percent-spaces", "zero", "int-one"],
)
def test_parse_error_rate(text, expected):
    assert parse_error_rate(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "not a number"),
        ("", "not a number"),
        ("-0.1", "negative"),
        ("-2%", "negative"),
        (3.5, "above 1"),
        ("150%", "above 1"),
        ("nan", "finite"),
        (True, "must be a number"),
    ],
    ids=[
        "junk",
        "empty",
        "negative",
        "negative-percent",
        "above-one",
        "above-100pct",
        "nan",
        "bool",
    ],
)
def test_parse_error_rate_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        parse_error_rate(text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"train_error": -0.1},
        {"dev_error": float("nan")},
        {"tolerance": -0.01},
        {"human_level_error": 0.01, "bayes_error": 0.02},
    ],
    ids=["negative-train", "nan-dev", "negative-tolerance", "bayes-above-human"],
)
def test_diagnose_rejects_impossible_inputs(kwargs):
    args = {"train_error": 0.1, "dev_error": 0.1} | kwargs
    with pytest.raises(ValueError):
        diagnose(args.pop("train_error"), args.pop("dev_error"), **args)


# --- data mismatch ----------------------------------------------------------------------------

GROUPS = {
    "europe": {"train_error": 0.0, "dev_error": 0.01},
    "asia": {"train_error": 0.05, "dev_error": 0.14},
}


def test_a_group_worse_on_train_too_is_harder_not_mismatched():
    """Both groups are in train: asia's dev error is high because its train error is too."""
    d = diagnose(0.004, 0.021, test_error=0.2, human_level_error=0.01, groups=GROUPS)
    assert d.mismatch is False
    verdicts = {g.name: g.verdict for g in d.groups}
    assert verdicts == {"europe": "fine", "asia": "harder"}
    out = d.to_dict()
    assert out["groups"]["asia"]["verdict"] == "harder"
    assert out["mismatch"] is False
    text = " ".join(d.recommendations)
    assert "'asia' is harder" in text and "not a data mismatch" in text
    assert "collect more" not in text


def counted(train, dev, test, n_train, n_dev, n_test):
    return {
        "train_error": train,
        "dev_error": dev,
        "test_error": test,
        "n_train": n_train,
        "n_dev": n_dev,
        "n_test": n_test,
    }


def test_a_group_missing_from_train_with_a_high_dev_error_is_a_mismatch():
    groups = {
        "web": counted(0.02, 0.03, 0.03, 9000, 500, 500),
        "phone": counted(None, 0.25, 0.24, 0, 500, 500),
    }
    d = diagnose(0.02, 0.14, test_error=0.135, human_level_error=0.0, groups=groups)
    assert d.mismatch is True
    assert {g.name: g.verdict for g in d.groups} == {"web": "fine", "phone": "mismatch"}
    snippet = next(r for r in d.recommendations if "data.weights" in r)
    assert "{group: {web: 1, phone: 2}}" in snippet


def test_a_gap_between_small_groups_is_undetermined():
    groups = {
        "a": counted(0.10, 0.12, 0.1, 60, 20, 20),
        "b": counted(0.10, 0.19, 0.2, 60, 20, 20),
    }
    d = diagnose(0.1, 0.155, groups=groups)
    assert {g.verdict for g in d.groups} == {"undetermined"}
    assert d.mismatch is False  # every group is in train like in dev: no mismatch can arise


def test_no_mismatch_when_groups_agree():
    groups = {"a": {"train_error": 0.01, "dev_error": 0.02}, "b": {"dev_error": 0.025}}
    d = diagnose(0.01, 0.022, groups=groups)
    assert d.mismatch is False
    assert d.to_dict()["groups"]["b"] == {
        "train_error": None,
        "dev_error": 0.025,
        "test_error": None,
        "n_train": None,
        "n_dev": None,
        "n_test": None,
        "verdict": "fine",
    }
    assert not any("mismatch" in r.lower() for r in d.recommendations)


def test_single_group_cannot_show_mismatch():
    assert diagnose(0.01, 0.02, groups={"only": {"dev_error": 0.5}}).mismatch is False


def test_mismatch_ordering_follows_the_lecture_chain():
    d = diagnose(0.004, 0.021, test_error=0.2, human_level_error=0.001, groups=GROUPS)
    assert mismatch_ordering(d) == [
        ("human-level", 0.001),
        ("train", 0.004),
        ("dev[europe]", 0.01),
        ("dev", 0.021),
        ("dev[asia]", 0.14),
        ("test", 0.2),
    ]


def test_the_chain_is_printed_in_the_order_of_its_values():
    """penguins: train 4.52% but the lab group's dev error 0.00%: the chain never goes down."""
    groups = {"lab": {"train_error": 0.0, "dev_error": 0.0}, "field": {"dev_error": 0.103}}
    chain = mismatch_ordering(diagnose(0.0452, 0.05, groups=groups))
    values = [value for _, value in chain]
    assert values == sorted(values)
    assert chain[0] == ("dev[lab]", 0.0)


def test_mismatch_ordering_omits_unknowns():
    d = diagnose(0.004, 0.021, groups={"x": {"train_error": 0.01, "dev_error": None}})
    assert [label for label, _ in mismatch_ordering(d)] == ["train", "dev"]


# --- recommendations specific to the run ------------------------------------------------------


def test_bias_recommendations_quote_the_run():
    d = diagnose(0.035, 0.04, human_level_error=0.007, context=PLAIN_RUN)
    recs = d.recommendations
    assert "Bigger network (model.hidden) — the best trial used hidden [64]" in recs
    assert (
        "Train longer (train.epochs) — the best trial ran all 100 epochs with early stopping off"
        in recs
    )
    assert any("train.optimizer" in r and "sgd" in r for r in recs)
    assert any("model.init" in r and "default" in r for r in recs)
    assert not any("dropout" in r.lower() for r in recs)  # variance is low: no variance remedies


def test_variance_recommendations_quote_the_run():
    d = diagnose(0.01, 0.05, human_level_error=0.007, context=PLAIN_RUN)
    recs = d.recommendations
    assert "Add dropout (model.dropout) — the best trial used none" in recs
    assert "Add L2 regularization (train.l2) — the best trial used 0" in recs
    assert any("train.early_stopping" in r and "without it" in r for r in recs)
    assert any("1078 examples" in r for r in recs)
    assert any(r.startswith("Smaller network (model.hidden)") for r in recs)
    assert not any("Bigger network" in r for r in recs)


def test_recommendations_skip_what_the_run_already_does():
    run = PLAIN_RUN | {
        "stopped_epoch": 40,
        "early_stopping": True,
        "dropout": 0.5,
        "l2": 1e-4,
        "optimizer": "adam",
        "init": "xavier_uniform",
    }
    bias = diagnose(0.035, 0.04, human_level_error=0.007, context=run).recommendations
    assert not any("Train longer" in r for r in bias)  # early stopping already ended it
    assert not any("train.optimizer" in r for r in bias)
    assert not any("model.init" in r for r in bias)
    assert any("Loosen regularization" in r and "dropout 0.5" in r for r in bias)

    variance = diagnose(0.01, 0.05, human_level_error=0.007, context=run).recommendations
    assert not any(r.startswith(("Add dropout", "Raise dropout")) for r in variance)
    assert not any("train.early_stopping" in r for r in variance)
    assert "Raise L2 regularization (train.l2) — the best trial used 0.0001" in variance


def test_raise_dropout_when_some_dropout_is_used():
    d = diagnose(0.01, 0.05, context={"dropout": 0.2})
    assert "Raise dropout (model.dropout) — the best trial used 0.2" in d.recommendations


def test_both_high_puts_bias_first_and_defers_variance():
    d = diagnose(0.035, 0.078, human_level_error=0.007, context=PLAIN_RUN)
    recs = d.recommendations
    assert recs[0].startswith("Bigger network")
    assert not any(r.startswith("Smaller network") for r in recs)
    assert any(r.startswith("Once the bias is low") for r in recs)


def test_recommendations_without_context_are_generic_but_name_spec_keys():
    for d in (diagnose(0.035, 0.04), diagnose(0.0, 0.05)):
        assert d.recommendations
        # Every remedy names a spec key (or a CLI option), except the data-only richer features.
        for rec in d.recommendations:
            assert "(" in rec or rec.startswith("Richer features"), rec


def test_right_fit_without_test_error_asks_for_the_test_set():
    recs = diagnose(0.008, 0.01, human_level_error=0.007).recommendations
    assert any("test set" in r for r in recs)
    assert any("bigger dev and test set" in r for r in recs)


# --- output -----------------------------------------------------------------------------------


def test_to_dict_keys_match_design_and_serialize():
    d = diagnose(0.004, 0.021, test_error=0.025, human_level_error=0.01)
    out = d.to_dict()
    assert set(out) == DESIGN_KEYS | EXTRA_KEYS
    assert json.loads(json.dumps(out)) == out
    assert out["avoidable_bias"] == d.train_error - 0.01  # unrounded
    assert out["focus"] == "variance"


def test_to_dict_with_groups_adds_groups_and_mismatch():
    out = diagnose(0.004, 0.021, groups=GROUPS).to_dict()
    assert set(out) == DESIGN_KEYS | EXTRA_KEYS | {"groups", "mismatch"}
    json.dumps(out)


def test_diagnosis_is_frozen():
    d = diagnose(0.01, 0.02)
    assert isinstance(d, Diagnosis)
    with pytest.raises(AttributeError):
        d.train_error = 0.5  # type: ignore[misc]


def test_summary_lines_read_as_the_lecture():
    d = diagnose(0.035, 0.078, human_level_error=0.007, bayes_error=0.005, groups=GROUPS)
    lines = summary_lines(d)
    assert "Avoidable bias 2.8% (train 3.5% − human 0.7%): high" in lines
    assert "Bias 3.0% (train 3.5% − Bayes 0.5%)" in lines
    assert "Variance 4.3% (dev 7.8% − train 3.5%): high" in lines
    assert "Verdict: underfitting and overfitting — focus on bias first" in lines
    assert any(line.startswith("Dev error by group:") and "data mismatch" in line for line in lines)
    assert "Recommendations:" in lines


def test_summary_lines_when_human_level_unknown():
    lines = summary_lines(diagnose(0.035, 0.04))
    assert "Bias 3.5% (train 3.5% − 0, human-level error unknown): high" in lines


def test_right_fit_with_a_bad_test_error_is_not_called_a_good_model():
    d = diagnose(0.035, 0.035, test_error=0.09, human_level_error=0.05)
    assert not any(r.startswith("The model fits well") for r in d.recommendations)
    assert any("test error does not follow" in r for r in d.recommendations)


def test_train_error_below_bayes_error_is_questioned():
    d = diagnose(0.2, 0.2, bayes_error=0.3, human_level_error=0.3)
    assert any("below the Bayes error" in r for r in d.recommendations)


# --- verdicts from intervals on the split sizes ----------------------------------------------

from hpsearch.diagnosis import Sample, difference_interval, wilson_interval  # noqa: E402


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    for errors, n in ((0, 114), (3, 114), (17, 359), (50, 50)):
        ours = wilson_interval(errors / n, n)
        ci = binomtest(errors, n).proportion_ci(method="wilson")
        assert ours == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_a_test_gap_from_three_errors_in_114_cannot_be_told():
    """grid-refine: 0/114 dev errors against 3/114 test errors."""
    sizes = {"train": Sample(341), "dev": Sample(114), "test": Sample(114)}
    d = diagnose(0.0, 0.0, test_error=3 / 114, human_level_error=0.0, samples=sizes)
    gap = d.judgements["test_gap"]
    assert gap.level == "undetermined"
    assert gap.interval[0] < 0.01 < gap.interval[1]
    assert gap.examples_needed > 114
    assert not any("overfit the dev set" in r for r in d.recommendations)
    assert any("Test gap 2.6%" in line and "can't tell" in line for line in summary_lines(d))


def test_with_enough_examples_the_same_rates_are_told():
    sizes = {"train": Sample(60_000), "dev": Sample(20_000), "test": Sample(20_000)}
    d = diagnose(0.0, 0.0, test_error=3 / 114, human_level_error=0.0, samples=sizes)
    assert d.judgements["test_gap"].level == "high"


def test_variance_is_high_low_or_undetermined_by_its_interval():
    def level(train, dev, n_train, n_dev):
        sizes = {"train": Sample(n_train), "dev": Sample(n_dev)}
        return diagnose(train, dev, human_level_error=0.0, samples=sizes).judgements["variance"]

    assert level(0.01, 0.12, 600, 200).level == "high"
    assert level(0.010, 0.011, 600_000, 200_000).level == "low"
    undecided = level(0.010, 0.025, 600, 200)
    assert undecided.level == "undetermined" and undecided.split == "dev"
    # the examples said to tell do tell
    told = level(0.010, 0.025, 3 * undecided.examples_needed, undecided.examples_needed)
    assert told.level != "undetermined"


def test_an_undetermined_component_leaves_the_verdict_open():
    sizes = {"train": Sample(90), "dev": Sample(30)}
    d = diagnose(0.0, 1 / 30, human_level_error=0.0, samples=sizes)
    assert d.high_variance is None and d.verdict == "can't tell"
    assert not any("fits well" in r for r in d.recommendations)
    assert any("about" in r and "dev examples" in r for r in d.recommendations)


def test_surpassing_human_level_is_about_the_train_error_and_its_interval():
    # train 3.52% against human 3%: the avoidable bias is positive, nothing is surpassed
    assert not diagnose(0.0352, 0.021, human_level_error=0.03).surpassed_human_level
    sizes = {"train": Sample(200), "dev": Sample(200)}
    small = diagnose(0.02, 0.03, human_level_error=0.03, samples=sizes)
    assert not small.surpassed_human_level  # 4/200 below 3% is within the noise
    sizes = {"train": Sample(50_000), "dev": Sample(20_000)}
    assert diagnose(0.02, 0.03, human_level_error=0.03, samples=sizes).surpassed_human_level


def test_differences_of_rates_use_newcombes_interval():
    # Newcombe (1998), Statistics in Medicine 17:873, table II example: 56/70 against 48/80
    low, high = difference_interval(56 / 70, Sample(70), 48 / 80, Sample(80))
    assert (low, high) == pytest.approx((0.0524, 0.3339), abs=5e-4)


# --- regression ---------------------------------------------------------------------------------


def test_regression_without_a_reference_cannot_judge_bias():
    d = diagnose(0.45, 0.52, regression=True)
    assert d.high_bias is None and d.bias_reference == "none"
    assert d.tolerance == pytest.approx(0.045)  # a tenth of the train error
    assert d.high_variance is True
    assert any("human_level_error" in r for r in d.recommendations)
    assert any(line.startswith("Bias: can't tell") for line in summary_lines(d))


def test_regression_intervals_use_the_per_example_spread():
    sizes = {"train": Sample(265, sd=0.8), "dev": Sample(88, sd=0.9)}
    d = diagnose(0.45, 0.52, human_level_error=0.4, regression=True, samples=sizes)
    assert d.judgements["variance"].level == "undetermined"  # 0.07 +- ~0.2
    sizes = {"train": Sample(26_500, sd=0.8), "dev": Sample(8_800, sd=0.9)}
    d = diagnose(0.45, 0.52, human_level_error=0.4, regression=True, samples=sizes)
    assert d.judgements["variance"].level == "high"


# --- remedies read the spec and the search ----------------------------------------------------


def test_remedies_name_the_keys_in_use_and_skip_what_is_searched():
    context = {
        **PLAIN_RUN,
        "hidden": [25, 25],
        "sizing": "layers",
        "searched": ["model.layers", "model.units", "train.lr", "model.dropout"],
    }
    bias = diagnose(0.035, 0.04, human_level_error=0.007, context=context).recommendations
    text = " ".join(bias)
    assert "Bigger network (widen search.space[model.layers, model.units]) — the best trial " in (
        text
    )
    assert "2 layers of 25 units" in text and "model.hidden" not in text
    assert "widen search.space[train.lr]" in text
    assert "search.space: train.epochs" in text and "search.space: model.layers" not in text
    variance = diagnose(0.001, 0.05, human_level_error=0.0, context=context).recommendations
    text = " ".join(variance)
    assert "Widen search.space[model.dropout] upwards" in text
    assert "Add dropout" not in text
    assert "Search regularization settings (search.space: train.l2)" in text


SNIPPET = __import__("re").compile(r"\((data\.weights|model\.init): (.+?)\)(?: |$|,)")


def test_every_snippet_a_remedy_suggests_validates_on_the_run_spec():
    import yaml

    from hpsearch.spec import spec_from_dict

    base = {
        "name": "s",
        "data": {"source": "x.csv", "target": "y", "group": "site"},
        "model": {"hidden": [8]},
    }
    groups = {
        "lab": counted(0.0, 0.0, 0.0, 300, 100, 100),
        "field-2": counted(None, 0.3, 0.3, 0, 100, 100),
    }
    cases = [
        diagnose(0.3, 0.35, context={**PLAIN_RUN, "init": None}),
        diagnose(0.3, 0.35, context=PLAIN_RUN),
        diagnose(0.0, 0.15, human_level_error=0.0, groups=groups),
    ]
    found = 0
    for d in cases:
        for recommendation in d.recommendations:
            for key, value in SNIPPET.findall(recommendation):
                section, field = key.split(".")
                raw = {**base, section: {**base[section], field: yaml.safe_load(value)}}
                spec_from_dict(raw, source="suggestion")  # raises when it does not validate
                found += 1
    assert found >= 3


# --- groups drawn at random: no verdict the numbers do not support -------------------------


def _drawn_groups(rng, rates, counts=(600, 200, 200)):
    """Per-group errors as a model with these per-group true error rates would measure them
    on splits holding every group in the same proportion."""
    out = {}
    for name, (train_rate, dev_rate) in rates.items():
        n_train, n_dev, n_test = counts
        out[name] = counted(
            rng.binomial(n_train, train_rate) / n_train,
            rng.binomial(n_dev, dev_rate) / n_dev,
            rng.binomial(n_test, dev_rate) / n_test,
            n_train,
            n_dev,
            n_test,
        )
    return out


def test_random_groups_of_one_distribution_are_never_called_mismatched():
    import numpy as np

    rng = np.random.default_rng(0)
    flagged = 0
    for _ in range(20):
        groups = _drawn_groups(rng, {"A": (0.12, 0.15), "B": (0.12, 0.15), "C": (0.12, 0.15)})
        d = diagnose(0.12, 0.15, human_level_error=0.0, groups=groups)
        assert d.mismatch is not True
        flagged += any(g.verdict in ("mismatch", "harder") for g in d.groups)
    assert flagged <= 1  # at least 19 of 20 seeds see no difference between the groups


@pytest.mark.parametrize(
    "hard", [(0.10, 0.11), (0.0, 0.12)], ids=["underfits-the-noisy-group", "overfits-it"]
)
def test_a_noisier_group_shuffled_into_every_split_is_harder_never_mismatched(hard):
    import numpy as np

    rng = np.random.default_rng(1)
    for _ in range(10):
        groups = _drawn_groups(rng, {"lab": (0.0, 0.0), "field": hard})
        d = diagnose(0.05, 0.06, human_level_error=0.0, groups=groups)
        verdicts = {g.name: g.verdict for g in d.groups}
        assert verdicts["field"] == "harder" and d.mismatch is False


# --- train_dev: variance apart from data mismatch ---------------------------------------------


def test_train_dev_separates_variance_from_mismatch():
    sizes = {
        "train": Sample(8000),
        "train_dev": Sample(4000),
        "dev": Sample(1000),
        "test": Sample(1000),
    }
    d = diagnose(
        0.02, 0.12, test_error=0.12, train_dev_error=0.021, human_level_error=0.0, samples=sizes
    )
    assert d.variance == pytest.approx(0.001)
    assert d.judgements["variance"].level == "low"
    assert d.judgements["mismatch"].level == "high" and d.mismatch is True
    assert d.high_variance is False
    lines = summary_lines(d)
    assert any(
        line.startswith("Data mismatch 9.9% (dev 12.0% − train_dev 2.1%): high") for line in lines
    )
    assert any("another mix of distributions" in r for r in d.recommendations)
    big = {name: Sample(n.n * 20) for name, n in sizes.items()}
    same = diagnose(0.02, 0.025, train_dev_error=0.021, human_level_error=0.0, samples=big)
    assert same.mismatch is False and same.judgements["variance"].level == "low"
    assert diagnose(0.02, 0.03, train_dev_error=0.021, samples=sizes).mismatch is None


@pytest.mark.parametrize("name", ["yes", "null", "a: b", "# x", "1e3", "north-east", "ünï"])
def test_the_weights_snippet_reads_back_as_the_group_names(name):
    """The suggested data.weights line is pasted into a spec: it must be YAML that names the
    groups exactly, whatever the data calls them."""
    import yaml

    from hpsearch.diagnosis import _yaml_key

    assert yaml.safe_load(f"{{{_yaml_key(name)}: 2}}") == {name: 2}
