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
