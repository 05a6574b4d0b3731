"""The round planner: budgets, seeds, refine rounds, and one planner for `run` and `minimize`."""

import json

import optuna
import pytest
import yaml

import hpsearch
from hpsearch.engine import RunOptions, run_spec
from hpsearch.rounds import (
    DEFAULT_TRIALS,
    plan_round,
    round_budgets,
    round_count,
    split_budget,
    total_budget,
    unseen,
)
from hpsearch.space import parse_free_space
from hpsearch.spec import SearchSpec


def search(**raw) -> SearchSpec:
    """A search section; the rounds read only its strategy and budgets (any space will do)."""
    return SearchSpec.model_validate({"space": {"x": {"low": 0.0, "high": 1.0}}, **raw})


def test_budgets_per_round():
    assert split_budget(10, 3) == [4, 3, 3]
    assert round_budgets(search(strategy="random", trials=9, refine={"rounds": 2})) == [3, 3, 3]
    assert round_budgets(search(strategy="random")) == split_budget(DEFAULT_TRIALS, 1)
    assert round_budgets(search(strategy="grid", refine={"rounds": 1})) == [None, None]
    assert round_count(search(strategy="grid", refine={"rounds": 3})) == 4


def test_total_budget_of_a_grid_is_its_planned_size():
    assert total_budget(search(strategy="grid")) is None
    assert total_budget(search(strategy="grid"), planned_target=12) == 12
    assert total_budget(search(strategy="grid", trials=5), planned_target=12) == 5
    assert total_budget(search(strategy="tpe")) == DEFAULT_TRIALS


SPACE = {
    "x": {"low": 0.0, "high": 1.0, "steps": 5},
    "c": {"choices": ["a", "b"]},
}


def test_round_zero_of_a_sampler_strategy_leaves_proposing_to_the_sampler():
    params = parse_free_space({"x": {"low": 0.0, "high": 1.0}})
    planned = plan_round(
        search(strategy="random", trials=6), params, 0, previous=None, finished=[], tried=[],
        budget=6, seed=0,
    )  # fmt: skip
    assert planned.points is None and planned.count == 6 and planned.space == params


def test_grid_round_names_its_points_and_skips_those_tried():
    params = parse_free_space(SPACE)
    tried = [{"x": 0.0, "c": "a"}, {"x": 0.25, "c": "b"}]
    planned = plan_round(
        search(strategy="grid"), params, 0, previous=None, finished=[], tried=tried,
        budget=None, seed=0,
    )  # fmt: skip
    assert len(planned.points) == 10 - 2 and planned.count == 8
    assert not any(p in tried for p in planned.points)


def test_refine_round_tightens_around_the_best_and_is_seeded():
    params = parse_free_space({"x": {"low": 0.0, "high": 1.0}})
    finished = [({"x": x / 10}, abs(x / 10 - 0.3)) for x in range(11)]
    spec = search(strategy="random", trials=20, refine={"rounds": 1, "keep": 0.2})
    kwargs = {"previous": params, "finished": finished, "tried": [], "budget": 10}
    first = plan_round(spec, params, 1, seed=4, **kwargs)
    again = plan_round(spec, params, 1, seed=4, **kwargs)
    other = plan_round(spec, params, 1, seed=5, **kwargs)
    assert first.points == again.points != other.points
    (x,) = first.space
    assert 0.1 <= x.spec.low < 0.3 < x.spec.high <= 0.5
    assert all(x.spec.low <= p["x"] <= x.spec.high for p in first.points)


def test_refine_round_over_ordered_choices_samples_a_contiguous_run():
    units = [512, 16, 256, 32, 128, 64, 8]
    params = parse_free_space({"units": {"choices": units}})
    # a noisy objective: 16 and 128 came out best, 32 and 64 between them did not
    value = {16: 0.1, 128: 0.2, 32: 0.5, 64: 0.6, 8: 0.7, 256: 0.8, 512: 0.9}
    finished = [({"units": u}, value[u]) for u in units]
    spec = search(strategy="random", trials=20, refine={"rounds": 1, "keep": 0.25})
    kwargs = {"previous": params, "finished": finished, "tried": [], "budget": 12}
    planned = plan_round(spec, params, 1, seed=0, **kwargs)
    (kept,) = planned.space
    assert kept.spec.choices == [16, 32, 128, 64]  # the run 16..128, in the order written
    assert kept.ordered_options == [16, 32, 64, 128]
    assert {p["units"] for p in planned.points} <= {16, 32, 64, 128}


def test_unseen_compares_decoded_values():
    points = [{"h": [8, 4]}, {"h": [16]}]
    assert unseen(points, [{"h": [8, 4]}]) == [{"h": [16]}]


# --- one planner: `hpsearch run` and `hpsearch.minimize` propose alike ----------------------

RUN_SPACE = {
    "train.lr": {"low": 1e-3, "high": 3e-1, "log": True},
    "model.dropout": {"low": 0.0, "high": 0.5},
}
GRID_SPACE = {
    "train.lr": {"low": 1e-3, "high": 1e-1, "log": True, "steps": 3},
    "train.batch_size": {"choices": [16, 32]},
}
CASES = {
    "grid+refine, budget": ("grid", GRID_SPACE, 10),
    "grid+refine, whole grids": ("grid", GRID_SPACE, None),
    "random+refine, budget": ("random", RUN_SPACE, 12),
    "random+refine, default budget": ("random", RUN_SPACE, None),
}


def _study_trials(run_root):
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_root / "study.log"))
    )
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).trials


@pytest.mark.parametrize("case", list(CASES))
def test_minimize_proposes_what_a_run_proposes(tmp_path, case):
    strategy, space, trials = CASES[case]
    search_section = {
        "strategy": strategy,
        "workers": 1,
        "refine": {"rounds": 2, "keep": 0.3},
        "space": space,
    }
    if trials is not None:
        search_section["trials"] = trials
    raw = {
        "name": "same",
        "seed": 3,
        "device": "cpu",
        "data": {"source": "sklearn:iris"},
        "model": {"hidden": [4]},
        "train": {"epochs": 2, "lr": 0.01, "batch_size": 32},
        "search": search_section,
    }
    path = tmp_path / "same.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))  # the space in the order given
    result = run_spec(path, RunOptions(runs_dir=tmp_path / "runs"))
    trained = result.summary["trials"]
    value_of = {json.dumps(t["params"], sort_keys=True): t["value"] for t in trained}

    def replay(params):  # the run's own result for the same point: the same rankings follow
        return value_of[json.dumps(params, sort_keys=True)]

    options = {"refine": {"rounds": 2, "keep": 0.3}}
    found = hpsearch.minimize(replay, space, strategy=strategy, trials=trials, seed=3, **options)
    # (these spaces hold no lists, so the study's params are the decoded values)
    run_points = [t.params for t in sorted(_study_trials(result.run.root), key=lambda t: t.number)]
    assert [t["params"] for t in found.trials] == run_points
    assert len(run_points) == len(trained)
