import math

import pytest
from scipy import stats

from hpsearch.errors import InputError
from hpsearch.space import apply_params, grid_points, ordered_choices, parse_free_space, parse_space
from hpsearch.strategies import refine_points
from tests.conftest import make_spec

SPACE = {
    "train.lr": {"low": 1e-4, "high": 1.0, "log": True},
    "train.batch_size": {"choices": [16, 32, 64]},
    "model.hidden": {"choices": [[8], [16, 8]]},
    "model.dropout": {"low": 0.0, "high": 0.5},
    "train.epochs": {"low": 5, "high": 20},
    "train.optimizer": {"choices": ["adam", "momentum"]},
    "train.momentum": {"low": 0.5, "high": 0.99, "when": {"train.optimizer": ["momentum"]}},
}


def spec_with(space, **search):
    return make_spec(search={"space": space, **search})


def sample(spec, n=200, seed=0):
    """n points drawn by Optuna's RandomSampler through `suggest` (what refine rounds use)."""
    return refine_points(parse_space(spec), n, seed, spec)


def test_kinds_follow_the_spec_fields():
    kinds = {p.path: p.kind for p in parse_space(spec_with(SPACE))}
    assert kinds["train.lr"] == "float"
    assert kinds["train.epochs"] == "int"
    assert kinds["model.dropout"] == "float"
    assert kinds["model.hidden"] == "categorical"


def test_samples_stay_in_bounds_and_conditions_hold():
    for values in sample(spec_with(SPACE)):
        assert 1e-4 <= values["train.lr"] <= 1.0
        assert values["train.batch_size"] in (16, 32, 64)
        assert values["model.hidden"] in ([8], [16, 8])
        assert isinstance(values["train.epochs"], int)
        assert ("train.momentum" in values) == (values["train.optimizer"] == "momentum")
        apply_params(spec_with(SPACE), values)  # every sample is a valid spec


def test_log_range_is_uniform_in_the_exponent():
    spec = spec_with({"train.lr": {"low": 1e-4, "high": 1.0, "log": True}})
    exponents = [math.log10(v["train.lr"]) for v in sample(spec, n=500)]
    assert stats.kstest(exponents, stats.uniform(loc=-4, scale=4).cdf).pvalue > 0.01
    # and clearly not uniform on the linear scale
    linear = [10**e for e in exponents]
    assert stats.kstest(linear, stats.uniform(loc=1e-4, scale=1 - 1e-4).cdf).pvalue < 1e-6


def test_grid_covers_every_point_once():
    spec = spec_with(
        {
            "train.lr": {"low": 1e-3, "high": 1e-1, "log": True, "steps": 3},
            "train.optimizer": {"choices": ["adam", "momentum"]},
            "train.momentum": {"values": [0.5, 0.9], "when": {"train.optimizer": ["momentum"]}},
        },
        strategy="grid",
    )
    points = grid_points(parse_space(spec), spec)
    # adam: 3 lrs; momentum: 3 lrs x 2 momenta
    assert len(points) == 9
    lrs = sorted({p["train.lr"] for p in points})
    assert lrs == pytest.approx([1e-3, 1e-2, 1e-1])


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        pytest.param(
            {"train.nope": {"low": 0.1, "high": 1.0}}, "not a searchable", id="unknown-path"
        ),
        pytest.param({"data.source": {"choices": ["a"]}}, "not a searchable", id="data-path"),
        pytest.param(
            {"train.optimizer": {"low": 1, "high": 2}}, "not numeric", id="range-on-choice"
        ),
        pytest.param({"train.epochs": {"low": 1.5, "high": 9}}, "whole numbers", id="int-field"),
        pytest.param({"train.optimizer": {"choices": ["adam", "lbfgs"]}}, "lbfgs", id="bad-choice"),
        pytest.param(
            {"train.momentum": {"low": 0.1, "high": 0.9, "when": {"train.nope": [1]}}},
            "when",
            id="when-missing-path",
        ),
    ],
)
def test_bad_space(space, expected):
    with pytest.raises(InputError, match=expected):
        parse_space(spec_with(space))


def test_grid_range_needs_steps():
    with pytest.raises(InputError, match="steps"):
        parse_space(spec_with({"train.lr": {"low": 0.1, "high": 1.0}}, strategy="grid"))


def test_apply_params_hidden_replaces_layers_units():
    spec = make_spec(model={"hidden": None, "layers": 2, "units": 4})
    assert apply_params(spec, {"model.hidden": [7]}).model.widths == [7]


@pytest.mark.parametrize(
    ("path", "meant"),
    [
        ("train.learning_rate", "train.lr"),
        ("train.batchsize", "train.batch_size"),
        ("model.dropuot", "model.dropout"),
        ("trian.lr", "train.lr"),
        ("train.weight_decay", "train.l2"),
    ],
)
def test_a_misspelled_path_is_named_at_its_yaml_line_with_what_was_meant(tmp_path, path, meant):
    from hpsearch.spec import load_spec

    (tmp_path / "spec.yaml").write_text(
        "name: t\ndata: {source: 'sklearn:iris'}\nsearch:\n  space:\n"
        "    model.dropout: {low: 0.0, high: 0.5}\n"
        f"    {path}: {{low: 0.1, high: 0.9}}\n"
    )
    spec = load_spec(tmp_path / "spec.yaml")
    with pytest.raises(InputError) as caught:
        parse_space(spec)
    assert str(caught.value).startswith(f"{tmp_path / 'spec.yaml'}:6: search.space[{path}]")
    assert f"did you mean {meant}?" in str(caught.value)


@pytest.mark.parametrize(
    ("entry", "ordered", "in_order"),
    [
        pytest.param({"choices": [64, 16, 32]}, True, [16, 32, 64], id="ints"),
        pytest.param({"choices": [0.3, 0.0, 0.6]}, True, [0.0, 0.3, 0.6], id="floats"),
        pytest.param({"values": [0.5, 0.1]}, True, [0.1, 0.5], id="grid-values"),
        pytest.param({"choices": [[128], [32], [64]]}, True, [[32], [64], [128]], id="widths"),
        pytest.param(
            {"choices": [[128, 128], [64, 64]]}, True, [[64, 64], [128, 128]], id="two-layers"
        ),
        pytest.param(
            {"choices": [[64, 32], [32, 64]]}, False, [[64, 32], [32, 64]], id="widths-crossing"
        ),
        pytest.param({"choices": [[32], [64, 32]]}, False, [[32], [64, 32]], id="lengths-differ"),
        pytest.param({"choices": ["tanh", "relu"]}, False, ["tanh", "relu"], id="strings"),
        pytest.param({"choices": [1, "relu"]}, False, [1, "relu"], id="mixed"),
        pytest.param({"choices": [True, False]}, False, [True, False], id="bools"),
        pytest.param({"choices": [1, True]}, False, [1, True], id="number-and-bool"),
        pytest.param({"choices": [64, 16], "ordered": False}, False, [64, 16], id="ordered-false"),
        pytest.param({"choices": [64, 16], "ordered": True}, True, [16, 64], id="ordered-true"),
        pytest.param({"low": 1, "high": 9}, False, [], id="range"),
    ],
)
def test_which_choices_are_ordered(entry, ordered, in_order):
    (param,) = parse_free_space({"x": entry})
    assert param.ordered is ordered
    assert param.ordered_options == in_order


def test_ordered_choices_of_a_spec_space_as_optuna_stores_them():
    space = {**SPACE, "model.hidden": {"choices": [[64], [8], [16]]}}
    params = parse_space(spec_with(space))
    assert ordered_choices(params) == {
        "train.batch_size": [16, 32, 64],
        "model.hidden": ["[8]", "[16]", "[64]"],
    }
    unordered = {**space, "train.batch_size": {"choices": [16, 32, 64], "ordered": False}}
    assert "train.batch_size" not in ordered_choices(parse_space(spec_with(unordered)))


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param({"choices": ["adam", "sgd"], "ordered": True}, "ordered: true needs"),
        pytest.param({"low": 0.1, "high": 0.9, "ordered": False}, "ordered applies only to"),
    ],
)
def test_ordered_where_it_cannot_apply(entry, expected):
    with pytest.raises(InputError, match=expected):
        parse_free_space({"x": entry})


def test_ordered_true_on_strings_in_a_spec_names_the_entry():
    space = {"train.optimizer": {"choices": ["adam", "sgd"], "ordered": True}}
    with pytest.raises(InputError, match=r"search.space\[train.optimizer\]: ordered: true"):
        parse_space(spec_with(space))


def test_resume_refuses_changed_ordered_choices_and_accepts_ordered_false():
    from hpsearch.spec import check_resume_compatible

    old = spec_with({"train.batch_size": {"choices": [16, 32, 64]}})
    for changed in ([16, 32, 128], [64, 32, 16]):
        new = spec_with({"train.batch_size": {"choices": changed}})
        with pytest.raises(InputError, match="choices changed"):
            check_resume_compatible(old, new)
    same = spec_with({"train.batch_size": {"choices": [16, 32, 64], "ordered": False}})
    assert check_resume_compatible(old, same) == []
