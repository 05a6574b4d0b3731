import itertools
import math
import statistics

import optuna
import pytest

from hpsearch.errors import InputError
from hpsearch.rounds import split_budget
from hpsearch.space import parse_space, suggest
from hpsearch.strategies import (
    SeededProposals,
    ask_next,
    best_fraction,
    check_strategy,
    make_sampler,
    tighten,
)
from tests.conftest import make_spec

SPACE = {
    "train.lr": {"low": 1e-5, "high": 1.0, "log": True},
    "model.dropout": {"low": 0.0, "high": 0.5},
    "train.batch_size": {"choices": [16, 32, 64]},
    "model.hidden": {"choices": [[8], [32, 16]]},
}
STRATEGIES = ["random", "tpe", "evolution"]


def toy_objective(values):
    """Torch-free stand-in for training: best near lr=1e-2, dropout=0.1, batch 32, [32, 16]."""
    loss = (math.log10(values["train.lr"]) + 2) ** 2 + (values["model.dropout"] - 0.1) ** 2
    loss += 0.5 * (values["train.batch_size"] != 32) + 0.5 * (values["model.hidden"] != [32, 16])
    return loss


def run_strategy(strategy, trials=60, seed=0):
    spec = make_spec(search={"strategy": strategy, "space": SPACE, "population": 10})
    params = parse_space(spec)
    study = optuna.create_study(sampler=make_sampler(spec.search, seed))
    seen = []
    for _ in range(trials):
        trial = study.ask()
        values = suggest(trial, params, spec)
        seen.append(values)
        study.tell(trial, toy_objective(values))
    return study, seen


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_contract_samples_in_bounds(strategy):
    _, seen = run_strategy(strategy)
    for values in seen:
        assert 1e-5 <= values["train.lr"] <= 1.0
        assert 0.0 <= values["model.dropout"] <= 0.5
        assert values["train.batch_size"] in (16, 32, 64)
        assert values["model.hidden"] in ([8], [32, 16])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_contract_same_seed_same_proposals(strategy):
    assert run_strategy(strategy, 30, seed=1)[1] == run_strategy(strategy, 30, seed=1)[1]


@pytest.mark.parametrize("strategy", ["tpe", "evolution"])
def test_guided_strategies_beat_their_start(strategy):
    study, _ = run_strategy(strategy, trials=120)
    values = [t.value for t in study.trials]
    assert min(values[60:]) <= min(values[:20])


def ask_batch(study, params, spec, count):
    """`count` trials asked together, then given their params one after another: what a
    worker does for a stack (hpsearch.workers.trial_loop)."""
    asked = [ask_next(study) for _ in range(count)]
    return [(trial, suggest(trial, params, spec)) for trial in asked]


def closest_pair_in_flight(sampler, seed, batch=8, finished=20):
    """The smallest distance between two of `batch` proposals asked together after
    `finished` told trials, on axes scaled to [0, 1] (lr on its log axis)."""
    spec = make_spec(search={"strategy": "tpe", "space": SPACE})
    params = parse_space(spec)
    study = optuna.create_study(sampler=sampler)
    for _ in range(finished):
        ((trial, values),) = ask_batch(study, params, spec, 1)
        study.tell(trial, toy_objective(values))
    points = [
        ((math.log10(v["train.lr"]) + 5) / 5, v["model.dropout"] / 0.5)
        for _, v in ask_batch(study, params, spec, batch)
    ]
    return min(math.dist(a, b) for a, b in itertools.combinations(points, 2))


def test_tpe_proposals_in_flight_spread_out():
    """Asked while the earlier ones still run, TPE's proposals keep apart (the constant liar
    counts running trials among the worse ones); without it they pile onto the best area."""
    search = make_spec(search={"strategy": "tpe", "space": SPACE}).search
    seeds = range(5)
    ours = [closest_pair_in_flight(make_sampler(search, s), s) for s in seeds]
    plain = [
        closest_pair_in_flight(
            SeededProposals(lambda p: optuna.samplers.TPESampler(seed=p, constant_liar=False), s),
            s,
        )
        for s in seeds
    ]
    assert statistics.median(ours) > 2 * statistics.median(plain)


@pytest.mark.parametrize("strategy", ["tpe", "evolution"])
def test_batches_asked_by_two_workers_propose_what_one_worker_does(strategy):
    """The i-th proposal comes from (seed, i) whichever worker's sampler asks for it, also when
    trials are asked in batches and run side by side."""
    spec = make_spec(search={"strategy": strategy, "space": SPACE, "population": 6})
    batch = (parse_space(spec), spec, 4)

    def proposals(workers):
        storage = optuna.storages.InMemoryStorage()
        optuna.create_study(storage=storage, study_name="s")
        # each worker loads the study with a sampler of its own
        studies = [
            optuna.load_study(study_name="s", storage=storage, sampler=make_sampler(spec.search, 3))
            for _ in range(workers)
        ]
        seen = []
        for _ in range(4):
            # two batches of 4 in flight together: one worker's, or one from each worker
            asked = [pair for w in range(2) for pair in ask_batch(studies[w % workers], *batch)]
            seen += [values for _, values in asked]
            for trial, values in asked:
                studies[0].tell(trial, toy_objective(values))
        return seen

    assert proposals(1) == proposals(2)


def test_split_budget():
    assert split_budget(10, 3) == [4, 3, 3]
    assert sum(split_budget(41, 4)) == 41


def test_best_fraction():
    points = [({"x": i}, float(v)) for i, v in enumerate([5, 1, 3, 2])]
    assert best_fraction(points, 0.5, maximize=False) == [{"x": 1}, {"x": 3}]
    assert best_fraction(points, 0.1, maximize=True) == [{"x": 0}]


def test_tighten_shrinks_around_the_best():
    spec = make_spec(search={"space": SPACE})
    params = parse_space(spec)
    best = [
        {"train.lr": 1e-3, "model.dropout": 0.1, "train.batch_size": 32, "model.hidden": [8]},
        {"train.lr": 1e-2, "model.dropout": 0.2, "train.batch_size": 32, "model.hidden": [8]},
    ]
    tightened = {p.path: p for p in tighten(params, best)}
    lr = tightened["train.lr"].spec
    assert 1e-5 < lr.low <= 1e-3 and 1e-2 <= lr.high < 1.0
    assert lr.log
    dropout = tightened["model.dropout"].spec
    assert 0.0 <= dropout.low <= 0.1 and 0.2 <= dropout.high <= 0.5
    assert dropout.high - dropout.low < 0.5
    assert tightened["train.batch_size"].spec.choices == [32]
    assert tightened["model.hidden"].spec.choices == [[8]]


def test_tighten_grid_keeps_one_spacing_margin():
    spec = make_spec(
        search={
            "strategy": "grid",
            "space": {"model.dropout": {"low": 0.0, "high": 0.4, "steps": 5}},
        }
    )
    (param,) = tighten(parse_space(spec), [{"model.dropout": 0.2}])
    assert (param.spec.low, param.spec.high) == pytest.approx((0.1, 0.3))


def test_refine_only_for_grid_and_random():
    spec = make_spec(
        search={"strategy": "tpe", "refine": {"rounds": 1, "keep": 0.2}, "space": SPACE}
    )
    with pytest.raises(InputError, match="refine"):
        check_strategy(spec.search)


def test_spread_keeps_the_budget_and_spans_the_grid():
    from hpsearch.rounds import spread

    points = [{"i": i} for i in range(100)]
    chosen = spread(points, 10)
    assert len(chosen) == 10
    assert chosen[0] == {"i": 0} and chosen[-1]["i"] >= 90
    assert spread(points, None) == points
    assert spread(points[:5], 10) == points[:5]


def test_best_fraction_keeps_every_trial_tied_at_the_cut():
    points = [({"x": i}, 0.0 if i < 6 else 0.1 * i) for i in range(12)]  # six tie at 0.00
    kept = best_fraction(points, 0.25, maximize=False)
    assert kept == [{"x": i} for i in range(6)]  # not an arbitrary three of the six


def test_evolution_is_handed_the_order_of_numeric_choices():
    space = {**SPACE, "model.hidden": {"choices": [[64], [8], [32]]}}
    spec = make_spec(search={"strategy": "evolution", "space": space})
    evolution = make_sampler(spec.search, 0)._make(1)  # one proposal's sampler
    assert evolution._ordered == {
        "train.batch_size": [16, 32, 64],
        "model.hidden": ["[8]", "[32]", "[64]"],
    }


def test_refine_keeps_a_contiguous_run_of_ordered_choices_around_the_best():
    space = {
        "train.batch_size": {"choices": [128, 8, 64, 16, 32]},
        "model.hidden": {"choices": [[64, 32], [8, 4], [16, 8], [32, 16]]},
        "train.optimizer": {"choices": ["adam", "sgd", "momentum"]},
    }
    best = [
        {"train.batch_size": 16, "model.hidden": [8, 4], "train.optimizer": "adam"},
        {"train.batch_size": 64, "model.hidden": [32, 16], "train.optimizer": "momentum"},
    ]
    tightened = {p.path: p for p in tighten(parse_space(make_spec(search={"space": space})), best)}
    # 32 lies between the best's 16 and 64: kept, in the order the user wrote the list
    assert tightened["train.batch_size"].spec.choices == [64, 16, 32]
    assert tightened["train.batch_size"].ordered_options == [16, 32, 64]
    assert tightened["model.hidden"].spec.choices == [[8, 4], [16, 8], [32, 16]]
    assert tightened["train.optimizer"].spec.choices == ["adam", "momentum"]  # no order: as used
    one = tighten(parse_space(make_spec(search={"space": space})), best[:1])
    assert one[0].spec.choices == [16]


def test_refine_treats_ordered_false_as_unrelated_options():
    space = {"train.batch_size": {"choices": [8, 16, 32, 64], "ordered": False}}
    best = [{"train.batch_size": 8}, {"train.batch_size": 64}]
    (param,) = tighten(parse_space(make_spec(search={"space": space})), best)
    assert param.spec.choices == [8, 64]
    assert param.spec.ordered is False
