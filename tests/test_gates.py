"""CI gates on the best trial: parsing and checking."""

import pytest

from hpsearch.errors import InputError
from hpsearch.gates import Gate, failed_gates, parse_gate


def test_parse_fractions_and_percentages():
    assert parse_gate("dev_accuracy=0.95", True) == Gate("dev_accuracy", 0.95, True)
    assert parse_gate(" test_error = 5% ", False) == Gate("test_error", 0.05, False)


@pytest.mark.parametrize(
    "text", ["dev_accuracy", "accuracy=0.9", "dev_nonsense=1", "valid_error=0.1", "=0.5"]
)
def test_bad_metrics_name_the_option(text):
    with pytest.raises(InputError, match="--fail-under: .* should be METRIC=VALUE"):
        parse_gate(text, True)


def test_bad_value():
    with pytest.raises(InputError, match="--fail-over: 'lots' is not a number"):
        parse_gate("dev_error=lots", False)


def test_under_and_over():
    under, over = Gate("dev_accuracy", 0.9, True), Gate("dev_error", 0.1, False)
    assert under.check({"dev_accuracy": 0.95}) is None
    assert under.check({"dev_accuracy": 0.85}) == "dev_accuracy 0.85 is under 0.9"
    assert over.check({"dev_error": 0.05}) is None
    assert over.check({"dev_error": 0.2}) == "dev_error 0.2 is over 0.1"
    assert over.check({"dev_error": 0.1}) is None  # at the threshold holds
    assert "was not measured" in over.check({})


def test_failed_gates_of_a_summary():
    gates = [Gate("dev_error", 0.1, False), Gate("test_accuracy", 0.9, True)]
    summary = {"best": {"metrics": {"dev_error": 0.2, "test_accuracy": 0.95}}}
    assert failed_gates(gates, summary) == ["dev_error 0.2 is over 0.1"]
    assert failed_gates(gates, {"best": None}) == [
        "dev_error: no trial completed",
        "test_accuracy: no trial completed",
    ]
    assert failed_gates([], summary) == []
