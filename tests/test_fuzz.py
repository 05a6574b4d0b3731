"""Property-based checks: any YAML document gives a valid spec or a clean input error; sampled
values stay in their ranges; run names never leave the runs directory."""

import optuna
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpsearch.errors import InputError
from hpsearch.runs import create_run
from hpsearch.space import parse_space, suggest
from hpsearch.spec import Spec, parse_yaml, spec_from_dict
from tests.conftest import make_spec

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
)
keys = st.sampled_from(
    [
        "name",
        "seed",
        "data",
        "model",
        "train",
        "search",
        "source",
        "lr",
        "hidden",
        "space",
        "low",
        "high",
        "log",
        "choices",
        "epochs",
        "device",
        "split",
        "weights",
        "feature_weights",
        "augment",
        "noise",
        "oversample",
        "init_from",
        "freeze",
        "x",
    ]
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_document_is_a_spec_or_a_clean_error(document):
    text = yaml.safe_dump(document)
    try:
        raw, lines = parse_yaml(text, "fuzz.yaml")
        spec = spec_from_dict(raw, "fuzz.yaml", lines)
    except InputError as exc:
        assert str(exc).strip()
        assert "Traceback" not in str(exc)
    else:
        assert isinstance(spec, Spec)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_escapes_as_another_exception(text):
    try:
        raw, lines = parse_yaml(text, "fuzz.yaml")
        spec_from_dict(raw, "fuzz.yaml", lines)
    except InputError:
        pass


ranges = st.tuples(st.floats(1e-6, 1e3), st.floats(1.0001, 1e3)).map(lambda t: (t[0], t[0] * t[1]))


@settings(max_examples=60, deadline=None)
@given(
    ranges,
    st.booleans(),
    st.lists(st.sampled_from([8, 16, 32, 64]), min_size=1, max_size=4, unique=True),
    st.integers(0, 2**16),
)
def test_sampled_values_stay_in_their_ranges(bounds, log, widths, seed):
    low, high = bounds
    spec = make_spec(
        search={
            "space": {
                "train.lr": {"low": low, "high": high, "log": log},
                "train.batch_size": {"choices": widths},
                "train.epochs": {"low": 1, "high": 50},
            }
        }
    )
    params = parse_space(spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(10):
        trial = study.ask()
        values = suggest(trial, params, spec)
        study.tell(trial, 0.0)
        assert low <= values["train.lr"] <= high
        assert values["train.batch_size"] in widths
        assert 1 <= values["train.epochs"] <= 50


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_run_names_never_escape_the_runs_directory(tmp_path_factory, name):
    runs = tmp_path_factory.mktemp("runs")
    try:
        spec = Spec.model_validate({"name": name, "data": {"source": "sklearn:iris"}})
    except Exception:
        return  # refused by the spec: nothing is created
    folder = create_run(runs, spec.name)
    assert folder.root.resolve().parent == runs.resolve()


def _numeric_paths() -> list[str]:
    """Every spec key that holds a number (the search space's bounds too)."""
    from hpsearch.spec import field_paths, field_types

    paths = [p for p in field_paths(Spec) if {int, float} & set(field_types(p) or [])]
    return paths + ["search.space.train.lr.low", "search.space.train.lr.high"]


HOSTILE_NUMBERS = st.one_of(
    st.sampled_from(
        [float("inf"), float("-inf"), float("nan"), True, False, 0, -1, 2**31, 2**32, 2**63, 10**30]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
)


def _with(path: str, value) -> dict:
    raw = {"name": "t", "data": {"source": "sklearn:iris"}}
    if path.startswith("search.space."):
        bound = path.rsplit(".", 1)[1]
        param = {"low": 1e-3, "high": 1e-1, bound: value}
        raw["search"] = {"space": {"train.lr": param}}
        return raw
    node = raw
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    if parents[:1] == ["search"]:
        raw["search"].setdefault("space", {"train.lr": {"low": 1e-3, "high": 1e-1}})
    return raw


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_numeric_paths()), HOSTILE_NUMBERS)
def test_numbers_at_and_beyond_every_bound_are_a_spec_or_a_clean_error(path, value):
    """inf, NaN, huge integers and booleans in every numeric key: refused with an input error,
    or accepted as a finite number a run can use (never a crash later)."""
    import math

    try:
        spec = spec_from_dict(_with(path, value))
    except InputError:
        return
    numbers = [v for v in _leaves(spec.model_dump()) if isinstance(v, int | float)]
    assert all(math.isfinite(v) for v in numbers), (path, value)
    if isinstance(value, bool):  # a count never takes true/false for 1/0
        assert not any(path.endswith(k) for k in ("epochs", "trials", "batch_size", "seed"))


def _leaves(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from _leaves(value)
    else:
        yield node
