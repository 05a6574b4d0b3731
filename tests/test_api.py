import math

import pytest

import hpsearch
from hpsearch.errors import InputError

SPACE = {
    "lr": {"low": 1e-5, "high": 1.0, "log": True},
    "units": {"low": 8, "high": 256, "log": True},
    "activation": {"choices": ["relu", "tanh", "gelu"]},
    "hidden": {"choices": [[16], [64, 32]]},
}


def shifted_quadratic(params):
    """Optimum at lr = 1e-2 (in log space), units near 64, gelu, [64, 32]."""
    loss = (math.log10(params["lr"]) + 2) ** 2 + (math.log2(params["units"]) - 6) ** 2 / 4
    loss += 0.5 * (params["activation"] != "gelu") + 0.5 * (params["hidden"] != [64, 32])
    return loss


GRID_SPACE = {
    "lr": {"low": 1e-5, "high": 1.0, "log": True, "steps": 6},
    "activation": {"choices": ["relu", "tanh", "gelu"]},
}


def grid_objective(params):
    return (math.log10(params["lr"]) + 2) ** 2 + 0.5 * (params["activation"] != "gelu")


CASES = {
    "random": ({}, SPACE, shifted_quadratic),
    "random+refine": ({"refine": {"rounds": 2, "keep": 0.2}}, SPACE, shifted_quadratic),
    "tpe": ({}, SPACE, shifted_quadratic),
    "evolution": ({"population": 12}, SPACE, shifted_quadratic),
    "grid+refine": ({"refine": {"rounds": 2, "keep": 0.2}}, GRID_SPACE, grid_objective),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_strategy_finds_the_optimum_region(case):
    options, space, objective = CASES[case]
    strategy = case.split("+")[0]
    result = hpsearch.minimize(objective, space, strategy=strategy, trials=120, seed=1, **options)
    assert abs(math.log10(result.best_params["lr"]) + 2) < 0.75
    assert result.best_params["activation"] == "gelu"
    assert result.best_value < 1.0
    assert all(t["state"] == "complete" for t in result.trials)


@pytest.mark.parametrize("strategy", ["random", "tpe", "evolution", "grid"])
def test_same_seed_same_proposals(strategy):
    space = GRID_SPACE if strategy == "grid" else SPACE
    objective = grid_objective if strategy == "grid" else shifted_quadratic
    first = hpsearch.minimize(objective, space, strategy=strategy, trials=30, seed=3)
    second = hpsearch.minimize(objective, space, strategy=strategy, trials=30, seed=3)
    assert [t["params"] for t in first.trials] == [t["params"] for t in second.trials]


def test_integer_ranges_and_conditions():
    space = {
        "layers": {"low": 1, "high": 4},
        "opt": {"choices": ["adam", "momentum"]},
        "momentum": {"low": 0.5, "high": 0.99, "when": {"opt": ["momentum"]}},
    }
    result = hpsearch.minimize(lambda p: p["layers"], space, strategy="random", trials=40)
    for trial in result.trials:
        assert isinstance(trial["params"]["layers"], int)
        assert ("momentum" in trial["params"]) == (trial["params"]["opt"] == "momentum")
    assert result.best_value == 1


def test_non_finite_values_fail_that_evaluation():
    result = hpsearch.minimize(
        lambda p: math.nan if p["x"] > 0.5 else p["x"],
        {"x": {"low": 0.0, "high": 1.0}},
        strategy="random",
        trials=20,
    )
    states = {t["state"] for t in result.trials}
    assert states == {"complete", "fail"}
    assert result.best_value <= 0.5


def test_bad_space_and_options():
    with pytest.raises(InputError, match="low must be below high"):
        hpsearch.minimize(lambda p: 0.0, {"x": {"low": 1.0, "high": 0.0}})
    with pytest.raises(InputError, match="refine"):
        hpsearch.minimize(lambda p: 0.0, SPACE, strategy="tpe", refine={"rounds": 1, "keep": 0.5})


def test_grid_with_refine_stays_within_its_budget():
    space = {name: {"low": 0, "high": 5, "steps": 3} for name in "abcdef"}  # 729 points
    result = hpsearch.minimize(
        lambda p: sum(p.values()),
        space,
        strategy="grid",
        trials=60,
        refine={"rounds": 2, "keep": 0.25},
    )
    assert 20 < len(result.trials) <= 60  # refine rounds skip points already run


def test_options_of_run_are_refused_by_name():
    for options in ({"workers": 8}, {"pruner": "asha", "timeout": "1s"}, {"stack": 4}):
        with pytest.raises(TypeError, match="minimize\\(\\) does not take .*one objective at a"):
            hpsearch.minimize(lambda p: 0.0, SPACE, **options)
    with pytest.raises(TypeError, match="does not take nonsense: it is not an option"):
        hpsearch.minimize(lambda p: 0.0, SPACE, nonsense=1)


def test_a_grid_without_a_budget_runs_every_point():
    result = hpsearch.minimize(grid_objective, GRID_SPACE, strategy="grid")
    assert len(result.trials) == 6 * 3


def test_importing_and_calling_leave_optuna_logging_alone():
    import subprocess
    import sys

    code = (
        "import logging, optuna; optuna.logging.set_verbosity(logging.DEBUG); "
        "import hpsearch.api, hpsearch.engine, hpsearch.study; "
        "assert optuna.logging.get_verbosity() == logging.DEBUG, 'changed on import'; "
        "hpsearch.minimize(lambda p: p['x'], {'x': {'low': 0.0, 'high': 1.0}}, trials=3); "
        "assert optuna.logging.get_verbosity() == logging.DEBUG, 'changed by a call'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# --- several values ---------------------------------------------------------------------------


def two_costs(params):
    """A trade-off: one cost falls where the other rises (front: 1e-3 <= lr <= 1e-1)."""
    x = math.log10(params["lr"])
    return [(x + 3) ** 2, (x + 1) ** 2]


@pytest.mark.parametrize("strategy", ["random", "tpe", "evolution"])
def test_an_objective_of_two_values_gets_their_front(strategy):
    space = {"lr": SPACE["lr"]}
    result = hpsearch.minimize(two_costs, space, strategy=strategy, trials=40, seed=2)
    complete = [t for t in result.trials if t["state"] == "complete"]
    assert len(complete) == 40 and all(len(t["value"]) == 2 for t in complete)

    def dominated(a):
        return any(all(b <= v for b, v in zip(o, a, strict=True)) and o != a for o in points)

    points = [t["value"] for t in complete]
    assert sorted(t["number"] for t in result.front) == sorted(
        t["number"] for t in complete if not dominated(t["value"])
    )
    inside = [-3 <= math.log10(t["params"]["lr"]) <= -1 for t in result.front]
    assert sum(inside) >= len(inside) - 2  # only the sample's two ends can lie outside
    # the best is the front's knee: a balance, near lr = 1e-2
    assert result.best_value in [t["value"] for t in result.front]
    assert abs(math.log10(result.best_params["lr"]) + 2) < 0.5


def test_a_grid_of_two_values_still_visits_every_point_once():
    space = {"lr": {"low": 1e-5, "high": 1.0, "log": True, "steps": 6}}
    result = hpsearch.minimize(two_costs, space, strategy="grid")
    assert sorted(round(math.log10(t["params"]["lr"])) for t in result.trials) == [
        -5,
        -4,
        -3,
        -2,
        -1,
        0,
    ]
    assert sorted(round(math.log10(t["params"]["lr"])) for t in result.front) == [-3, -2, -1]


def test_a_first_evaluation_that_fails_still_counts():
    calls = []

    def flaky(params):
        calls.append(params)
        return [math.nan, 0.0] if len(calls) == 1 else two_costs(params)

    result = hpsearch.minimize(flaky, {"lr": SPACE["lr"]}, strategy="random", trials=6)
    assert [t["state"] for t in result.trials] == ["fail"] + ["complete"] * 5
    assert result.trials[0]["params"] == calls[0]


def test_several_values_refuse_refine_and_a_changing_count():
    space = {"lr": SPACE["lr"]}
    with pytest.raises(InputError, match="leave refine out"):
        hpsearch.minimize(two_costs, space, strategy="random", refine={"rounds": 1, "keep": 0.5})
    counts = iter([1, 2, 2, 2])
    with pytest.raises(InputError, match="returned 2 values, but 1 before"):
        hpsearch.minimize(lambda p: [1.0] * next(counts), space, strategy="random", trials=4)
