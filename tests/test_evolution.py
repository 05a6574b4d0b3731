import math
from collections import Counter

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.testing.pytest_samplers import BasicSamplerTestCase
from optuna.trial import create_trial

import hpsearch
from hpsearch.evolution import EvolutionSampler, KnownConfigurations
from hpsearch.space import parse_free_space, suggest
from hpsearch.strategies import SeededProposals, ask_next

SPACE = {
    "lr": {"low": 1e-5, "high": 1.0, "log": True},
    "units": {"low": 8, "high": 512, "log": True},
    "layers": {"low": 1, "high": 4},
    "dropout": {"low": 0.0, "high": 0.5, "step": 0.1},
    "width": {"low": 16, "high": 64, "step": 16},
    "activation": {"choices": ["relu", "tanh", "gelu"]},
    "hidden": {"choices": [[16], [64, 32]]},
}
DISTRIBUTIONS = {
    "x": FloatDistribution(0.0, 1.0),
    "y": FloatDistribution(0.0, 1.0),
    "z": FloatDistribution(0.0, 1.0),
}


def bowl(params):
    loss = (math.log10(params["lr"]) + 2) ** 2 + (params["layers"] - 2) ** 2
    return loss + params["dropout"] + (params["activation"] != "gelu")


def differing(a, b):
    return sum(a.get(k) != b.get(k) for k in set(a) | set(b))


def study_with(points, direction="minimize", **options):
    """A study holding complete trials at `points` ((x, y, z), value), oldest first."""
    study = optuna.create_study(direction=direction, sampler=EvolutionSampler(seed=0, **options))
    for (x, y, z), value in points:
        params = {"x": x, "y": y, "z": z}
        study.add_trial(create_trial(params=params, distributions=DISTRIBUTIONS, value=value))
    return study


def ask_params(study, value=None):
    """A proposal; told `value`, or left running so that the population stays as it was."""
    trial = study.ask(DISTRIBUTIONS)
    if value is not None:
        study.tell(trial, value)
    return trial.params


def test_proposals_stay_inside_the_space():
    result = hpsearch.minimize(bowl, SPACE, strategy="evolution", trials=80, population=8)
    for params in (t["params"] for t in result.trials):
        assert 1e-5 <= params["lr"] <= 1.0
        assert 8 <= params["units"] <= 512 and isinstance(params["units"], int)
        assert params["layers"] in (1, 2, 3, 4)
        assert any(math.isclose(params["dropout"], k / 10) for k in range(6))
        assert params["width"] in (16, 32, 48, 64)
        assert params["activation"] in ("relu", "tanh", "gelu")
        assert params["hidden"] in ([16], [64, 32])


def test_a_child_changes_one_gene_of_a_recent_trial():
    study = optuna.create_study(sampler=EvolutionSampler(population=8, seed=1))
    params = parse_free_space(SPACE)
    history = []
    for _ in range(40):
        trial = study.ask()
        values = suggest(trial, params, None)
        if len(history) >= 4:  # past the random start
            assert min(differing(values, old) for old in history[-8:]) == 1
        history.append(values)
        study.tell(trial, bowl(values))


def test_the_parent_comes_from_the_recent_population():
    old_best = [((0.5, 0.5, 0.5), -100.0)]
    recent = [((i / 10, 0.9, 0.2), float(i)) for i in range(1, 5)]
    study = study_with(old_best + recent, population=4, tournament=4)
    for _ in range(5):
        child = ask_params(study)  # the tournament sees all 4 recent trials: trial 1 wins
        assert differing(child, {"x": 0.1, "y": 0.9, "z": 0.2}) == 1


def test_maximize_picks_the_largest_value():
    points = [((i / 10, 0.5, 0.5), float(i)) for i in range(1, 7)]
    study = study_with(points, direction="maximize", population=6, tournament=6)
    child = ask_params(study)
    assert differing(child, {"x": 0.6, "y": 0.5, "z": 0.5}) == 1


def test_random_start_then_evolution():
    study = study_with([], population=10)
    first = [ask_params(study, 1.0) for _ in range(5)]
    assert all(differing(a, b) == 3 for i, a in enumerate(first) for b in first[:i])
    assert min(differing(ask_params(study), old) for old in first) == 1


def test_no_repeated_configuration_in_a_small_discrete_space():
    space = {"a": {"low": 0, "high": 2}, "b": {"choices": ["p", "q"]}, "c": {"low": 0, "high": 2}}
    result = hpsearch.minimize(
        lambda p: p["a"] + p["c"], space, strategy="evolution", trials=12, population=4, seed=2
    )
    keys = [tuple(sorted(t["params"].items())) for t in result.trials]
    assert len(set(keys[2:])) == len(keys[2:])  # the random start (2 points) aside


def test_children_asked_together_differ_from_each_other_and_from_finished_trials():
    """A stack asks several children before any finishes, then gives them their params one
    after another (hpsearch.workers.trial_loop): each child keeps apart from those before it,
    though most are one-gene mutations of the same best parent."""
    space = {"a": {"low": 0, "high": 7}, "b": {"low": 0, "high": 7}, "c": {"choices": ["p", "q"]}}
    params = parse_free_space(space)
    known = KnownConfigurations()
    sampler = SeededProposals(lambda s: EvolutionSampler(4, seed=s, known=known), seed=0)
    study = optuna.create_study(sampler=sampler)
    finished = set()
    for size in (4, 6, 6):  # the random start (which may repeat), then batches of children
        asked = [ask_next(study) for _ in range(size)]
        children = [suggest(trial, params, None) for trial in asked]
        keys = [tuple(sorted(child.items())) for child in children]
        if finished:
            assert len(set(keys)) == size
            assert not finished & set(keys)
        for trial, child in zip(asked, children, strict=True):
            study.tell(trial, child["a"] + child["b"] + (child["c"] == "q"))
        finished |= set(keys)


def test_integer_steps_always_move():
    sampler = EvolutionSampler(sigma=0.01, seed=0)  # tiny steps would round back
    dist = IntDistribution(0, 3)
    assert all(sampler._mutate_gene(1, dist) in (0, 2) for _ in range(20))
    assert all(sampler._mutate_gene(3, dist) == 2 for _ in range(5))
    stepped = FloatDistribution(0.0, 0.5, step=0.1)
    assert all(sampler._mutate_gene(0.5, stepped) == pytest.approx(0.4) for _ in range(5))
    choices = CategoricalDistribution(["a", "b", "c"])
    assert all(sampler._mutate_gene("a", choices) in ("b", "c") for _ in range(10))


def test_conditional_params_are_sampled_when_their_condition_turns_true():
    space = {
        "opt": {"choices": ["adam", "momentum"]},
        "momentum": {"low": 0.5, "high": 0.99, "when": {"opt": ["momentum"]}},
        "lr": {"low": 1e-4, "high": 1e-1, "log": True},
    }
    result = hpsearch.minimize(
        lambda p: p.get("momentum", 1.0) + abs(math.log10(p["lr"]) + 2),
        space,
        strategy="evolution",
        trials=40,
        population=6,
    )
    for params in (t["params"] for t in result.trials):
        assert ("momentum" in params) == (params["opt"] == "momentum")
        assert 0.5 <= params.get("momentum", 0.5) <= 0.99


def test_same_seed_same_proposals_other_seed_others():
    def run(seed):
        result = hpsearch.minimize(bowl, SPACE, strategy="evolution", trials=30, seed=seed)
        return [t["params"] for t in result.trials]

    assert run(4) == run(4)
    assert run(4) != run(5)


class TestOptunaSamplerContract(BasicSamplerTestCase):
    """Optuna's own test suite for samplers (float, int, categorical, conditional and dynamic
    spaces, NaN objectives, fixed params), run against the aging-evolution sampler."""

    @pytest.fixture
    def sampler(self):
        return lambda: EvolutionSampler(population=4, seed=0)


def index_steps(sampler, options, start, order, count=2000):
    dist = CategoricalDistribution(options)
    ranked = order or sorted(options)
    steps = [
        ranked.index(sampler._mutate_gene(start, dist, order)) - ranked.index(start)
        for _ in range(count)
    ]
    return Counter(abs(s) for s in steps)


def test_an_ordered_choice_steps_to_its_neighbours():
    # given out of order: the step is along the sorted options, not the list as written
    options = [512, 16, 128, 32, 256, 64, 8]
    sizes = index_steps(EvolutionSampler(seed=0), options, 64, sorted(options))
    assert sizes[0] == 0 and sizes[1] > 0.85 * 2000  # always a move, nearly always to a neighbour
    assert sizes[2] > 0  # now and then two
    assert max(sizes) <= 4


def test_an_unordered_choice_jumps_to_any_other():
    options = [512, 16, 128, 32, 256, 64, 8]
    sizes = index_steps(EvolutionSampler(seed=0), options, 64, None)
    assert sizes[0] == 0 and sizes[3] > 0.1 * 2000  # as far as the ends, about as often as 1


# --- several objectives, constraints ------------------------------------------------------------


def two_objective_study(points, constraints=None, **options):
    """Complete trials at `points` ((x, y, z), [v1, v2]); `constraints`: each one's value."""
    sampler = EvolutionSampler(seed=0, **options)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for i, ((x, y, z), values) in enumerate(points):
        attrs = {}
        if constraints is not None:
            attrs = {"constraints:size": constraints[i]}
        study.add_trial(
            create_trial(
                params={"x": x, "y": y, "z": z},
                distributions=DISTRIBUTIONS,
                values=values,
                system_attrs=attrs,
            )
        )
    return study


def parents_of(study, asks=40):
    """Which trial each child copies most genes from (a child changes one gene)."""
    trials = study.trials
    parents = Counter()
    for _ in range(asks):
        child = ask_params(study)
        nearest = min(trials, key=lambda t: differing(t.params, child))
        parents[nearest.number] += 1
    return parents


def test_with_two_objectives_parents_come_from_the_front_spread_along_it():
    # trials 0-2 are the front (0 and 2 its ends); 3-5 are dominated
    front = [((0.1, 0.1, 0.1), [1, 9]), ((0.3, 0.3, 0.3), [5, 5]), ((0.5, 0.5, 0.5), [9, 1])]
    behind = [((0.7, 0.7, 0.7), [6, 6]), ((0.8, 0.8, 0.8), [9, 9]), ((0.9, 0.9, 0.9), [7, 9])]
    # any 4 of the 6 hold a front trial, so the tournament always crowns one
    study = two_objective_study(front + behind, population=6, tournament=4, startup=1)
    parents = parents_of(study)
    assert set(parents) <= {0, 1, 2}, parents
    # both ends of the front breed (crowding), not the first by number alone: 2 wins
    # whenever 0 is not drawn, a third of the time
    assert parents[0] >= 6 and parents[2] >= 6, parents


def test_infeasible_trials_do_not_breed_while_feasible_ones_exist():
    points = [((0.1, 0.1, 0.1), [1, 1]), ((0.5, 0.5, 0.5), [5, 5]), ((0.9, 0.9, 0.9), [6, 6])]
    # the best trial lies outside its constraint: the others are bred from instead
    study = two_objective_study(points, [3.0, 0.0, 0.0], population=3, tournament=3, startup=1)
    assert set(parents_of(study)) == {1}
