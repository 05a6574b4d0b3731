"""summary.json (and `report --format json`, `run --json`) keeps the shape DESIGN.md promises."""

import json

import pytest
from typer.testing import CliRunner

from hpsearch.cli import app

TINY_SEARCH = """\
name: shape
device: cpu
data: {source: sklearn:iris}
model: {hidden: [8]}
train: {epochs: 3}
human_level_error: 0.02
search:
  trials: 3
  workers: 1
  space:
    train.lr: {low: 1.0e-3, high: 1.0e-1, log: true}
"""

NUMBER = (int, float)


def check(value, shape, where="summary"):
    """`shape` is a type, a tuple of types, a dict of key -> shape, or [item shape]."""
    if isinstance(shape, dict):
        assert isinstance(value, dict), where
        for key, inner in shape.items():
            assert key in value, f"{where}.{key} is missing"
            check(value[key], inner, f"{where}.{key}")
    elif isinstance(shape, list):
        assert isinstance(value, list), where
        for index, item in enumerate(value):
            check(item, shape[0], f"{where}[{index}]")
    else:
        assert isinstance(value, shape), f"{where}: {type(value).__name__} is not {shape}"


OPTIONAL_NUMBER = (*NUMBER, type(None))
JUDGEMENT = {"value": NUMBER, "interval": [NUMBER], "level": str}
GROUP = {
    "train_error": OPTIONAL_NUMBER,
    "dev_error": OPTIONAL_NUMBER,
    "test_error": OPTIONAL_NUMBER,
    "n_train": int,
    "n_dev": int,
    "n_test": int,
    "verdict": str,
}
SHAPE = {
    "run": str,
    "name": str,
    "state": str,
    "strategy": (str, type(None)),
    "mode": (str, type(None)),
    "objective": {"metric": str, "direction": str},
    "counts": {"complete": int, "pruned": int, "failed": int},
    "best": {
        "trial": int,
        "params": dict,
        "metrics": {"train_error": NUMBER, "dev_error": NUMBER, "test_error": NUMBER},
    },
    "diagnosis": {
        "human_level_error": OPTIONAL_NUMBER,
        "bayes_error": OPTIONAL_NUMBER,
        "bias": OPTIONAL_NUMBER,
        "avoidable_bias": OPTIONAL_NUMBER,
        "variance": NUMBER,
        "high_bias": (bool, type(None)),  # None: the sample sizes cannot tell
        "high_variance": (bool, type(None)),
        "focus": (str, type(None)),
        "recommendations": [str],
        "judgements": {
            "bias": JUDGEMENT,
            "variance": JUDGEMENT,
            "test_gap": JUDGEMENT,
        },
    },
    "trials": [
        {"number": int, "state": str, "reason": (str, type(None)), "params": dict, "metrics": dict}
    ],
}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shape")
    spec = tmp / "shape.yaml"
    spec.write_text(TINY_SEARCH)
    runner = CliRunner()
    run = runner.invoke(app, ["run", str(spec), "--runs-dir", str(tmp), "--json", "--quiet"])
    assert run.exit_code == 0, run.output
    report = runner.invoke(app, ["report", "--runs-dir", str(tmp), "--format", "json"])
    assert report.exit_code == 0, report.output
    return json.loads(run.stdout), json.loads(report.stdout)


def test_run_json_matches_the_design_shape(outputs):
    check(outputs[0], SHAPE)


def test_report_json_is_the_same_summary(outputs):
    check(outputs[1], SHAPE)
    assert outputs[0] == outputs[1]


def test_errors_are_fractions(outputs):
    summary = outputs[0]
    for key in ("train_error", "dev_error", "test_error"):
        assert 0.0 <= summary["best"]["metrics"][key] <= 1.0
    assert summary["diagnosis"]["avoidable_bias"] == pytest.approx(
        summary["best"]["metrics"]["train_error"] - 0.02
    )
    assert summary["state"] == "finished"
    assert summary["counts"]["complete"] + summary["counts"]["failed"] == 3


def test_every_verdict_carries_its_interval(outputs):
    judgements = outputs[0]["diagnosis"]["judgements"]
    for name in ("bias", "variance", "test_gap"):
        low, high = judgements[name]["interval"]
        assert low <= judgements[name]["value"] <= high
        assert judgements[name]["level"] in ("high", "low", "undetermined")


def test_groups_have_counts_errors_and_a_verdict(tmp_path):
    from tests.conftest import write_mixed_groups

    spec = write_mixed_groups(tmp_path)
    run = CliRunner().invoke(
        app, ["run", str(spec), "--runs-dir", str(tmp_path / "runs"), "--json", "--quiet"]
    )
    assert run.exit_code == 0, run.output
    diagnosis = json.loads(run.stdout)["diagnosis"]
    assert set(diagnosis["groups"]) == {"easy", "hard"}
    for name, group in diagnosis["groups"].items():
        check(group, GROUP, f"summary.diagnosis.groups.{name}")
        assert group["verdict"] in ("mismatch", "harder", "fine", "undetermined")
    assert diagnosis["mismatch"] in (True, False, None)


def test_rerank_standings_tell_apart_only_what_the_seeds_can():
    from hpsearch.outcome import TrialOutcome
    from hpsearch.summary import best_outcome, rerank_standings
    from tests.conftest import make_spec

    def outcome(number, value, rerank_of=None):
        o = TrialOutcome(number, "complete", None, {"x": number}, 0, value, {"dev_loss": value})
        return TrialOutcome.from_json({**o.to_json(), "rerank_of": rerank_of})

    spec = make_spec()
    outcomes = [outcome(0, 0.10), outcome(1, 0.09), outcome(2, 0.30)]
    outcomes += [outcome(3, 0.11, 0), outcome(4, 0.10, 0)]  # trial 0: mean 0.103
    outcomes += [outcome(5, 0.14, 1), outcome(6, 0.13, 1)]  # trial 1: lucky first draw
    outcomes += [outcome(7, 0.31, 2), outcome(8, 0.29, 2)]
    standings = rerank_standings(spec, outcomes)
    assert [s.original.number for s in standings] == [0, 1, 2]
    assert [s.distinguishable for s in standings] == [False, False, True]
    assert best_outcome(spec, outcomes).number == 0  # not trial 1, the single best draw


@pytest.mark.parametrize(
    "objective",
    [
        {"metric": "dev_error"},
        {"metric": "dev_accuracy", "direction": "maximize"},
        {"metrics": ["dev_error", "n_params"]},
    ],
    ids=["minimize", "maximize", "two-objectives"],
)
def test_the_live_status_tally_matches_one_made_from_every_trial(objective):
    """Trials finish in any state, with ties, some re-ranked, some later replaced by a
    retry: the status kept trial by trial equals the one computed from all counted trials."""
    import random

    from hpsearch.outcome import TrialOutcome, TrialState
    from hpsearch.summary import StatusTally, best_outcome
    from tests.conftest import make_spec

    spec = make_spec(objective=objective)
    rng = random.Random(3)
    tally, counted = StatusTally(spec), {}
    for number in range(300):
        state = rng.choice(["complete", "complete", "complete", "pruned", "failed"])
        value = rng.randint(0, 8) / 8 if state == "complete" else None
        values = [value, float(rng.randint(1, 5))] if value is not None else None
        rerank_of = rng.randrange(number) if number > 250 and state == "complete" else None
        outcome = TrialOutcome(
            number, state, None, {}, 0, value, {"dev_loss": rng.random()},
            values=values if spec.objective.several else None, rerank_of=rerank_of,
        )  # fmt: skip
        tally.add(outcome)
        counted[number] = outcome
        if state == "failed" and rng.random() < 0.5:  # interrupted, and retried
            tally.remove(number)
            del counted[number]
        status = tally.status(None, 1.0, 0)
        best = best_outcome(spec, list(counted.values()))
        assert status.best_trial == (best.number if best else None)
        assert status.done == len(counted)
        for state_ in TrialState:
            assert status.counts[state_.value] == sum(o.state == state_ for o in counted.values())
