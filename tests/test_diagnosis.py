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


def test_mismatch_detected_when_group_dev_errors_spread_beyond_tolerance():
    d = diagnose(0.004, 0.021, test_error=0.2, human_level_error=0.01, groups=GROUPS)
    assert d.mismatch is True
    out = d.to_dict()
    assert out["groups"] == GROUPS
    assert out["mismatch"] is True
    text = " ".join(d.recommendations)
    assert "collect more data like 'asia'" in text
    assert "Shuffle all groups together" in text
    assert "data.weights: {group: {asia: 2}}" in text


def test_no_mismatch_when_groups_agree():
    groups = {"a": {"train_error": 0.01, "dev_error": 0.02}, "b": {"dev_error": 0.025}}
    d = diagnose(0.01, 0.022, groups=groups)
    assert d.mismatch is False
    assert d.to_dict()["groups"]["b"] == {"train_error": None, "dev_error": 0.025}
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


def test_mismatch_ordering_omits_unknowns():
    d = diagnose(0.004, 0.021, groups={"x": {"train_error": 0.01, "dev_error": None}})
    assert [label for label, _ in mismatch_ordering(d)] == ["train", "dev"]


# --- recommendations specific to the run ------------------------------------------------------


def test_bias_recommendations_quote_the_run():
    d = diagnose(0.035, 0.04, human_level_error=0.007, context=PLAIN_RUN)
    recs = d.recommendations
    assert "Bigger network (model.hidden) — the best trial used hidden [64]" in recs
    assert (
        "Train longer (train.epochs) — the best trial ran all 100 epochs without stopping early"
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
