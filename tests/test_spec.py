from pathlib import Path

import pytest

from hpsearch.errors import InputError
from hpsearch.spec import (
    ModelSpec,
    Spec,
    load_spec,
    parse_duration,
    spec_from_dict,
    spec_to_yaml,
)


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(InputError) as info:
        load_spec(write(tmp_path, text))
    return str(info.value)


MINIMAL = "name: t\ndata: {source: sklearn:iris}\n"


def test_minimal_spec_fills_defaults(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL))
    assert spec.model.widths == [64, 64]
    assert spec.train.optimizer == "adam"
    assert spec.train.early_stopping.patience == 10
    assert spec.objective.resolved_direction == "minimize"
    assert spec.search is None


def test_exponent_without_dot_is_a_float(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL + "train: {lr: 1e-3, l2: 5E-4}\n"))
    assert spec.train.lr == pytest.approx(1e-3)
    assert spec.train.l2 == pytest.approx(5e-4)


def test_relative_data_path_resolves_against_spec_file(tmp_path):
    (tmp_path / "sub").mkdir()
    spec = load_spec(write(tmp_path / "sub", "name: t\ndata: {source: ../d.csv, target: y}\n"))
    assert Path(spec.data.source) == (tmp_path / "d.csv").resolve()


BAD_SPEC_TEXTS = [
    pytest.param(MINIMAL + "train: {lrr: 0.1}\n", "did you mean 'lr'", id="unknown-key-hint"),
    pytest.param(MINIMAL + "modle: {}\n", "did you mean 'model'", id="unknown-top-key"),
    pytest.param(MINIMAL + "A: 1\n", "unknown key 'A'", id="unknown-capital-key"),
    pytest.param(
        "name: t\nname: u\ndata: {source: sklearn:iris}\n", "duplicate key 'name'", id="dup"
    ),
    pytest.param(MINIMAL + "train: {lr: -1}\n", "train.lr", id="negative-lr"),
    pytest.param(MINIMAL + "train: {epochs: many}\n", "train.epochs", id="wrong-type"),
    pytest.param(MINIMAL + "model: {activation: swish}\n", "model.activation", id="bad-literal"),
    pytest.param("name: a/b\ndata: {source: sklearn:iris}\n", "name", id="slash-in-name"),
    pytest.param("name: ..\ndata: {source: sklearn:iris}\n", "name", id="dotdot-name"),
    pytest.param("name: t\ndata: {source: sklearn:mnist}\n", "data.source", id="unknown-dataset"),
    pytest.param("name: t\ndata: {source: x.txt}\n", "data.source", id="bad-suffix"),
    pytest.param(
        MINIMAL.replace("}", ", split: {train: .5, dev: .2, test: .2}}"),
        "sum to 1",
        id="split-sum",
    ),
    pytest.param(
        MINIMAL.replace("}", ", split: {train: .8, dev: 0, test: .2}}"),
        "data.split.dev",
        id="empty-split",
    ),
    pytest.param(
        MINIMAL + "model: {hidden: [8], layers: 2, units: 4}\n",
        "either",
        id="hidden-and-layers",
    ),
    pytest.param(
        MINIMAL + "search: {space: {train.lr: {low: 1, high: 0.1}}}\n",
        "low must be below high",
        id="inverted-range",
    ),
    pytest.param(
        MINIMAL + "search: {space: {train.lr: {low: 0, high: 1, log: true}}}\n",
        "low > 0",
        id="log-range-zero",
    ),
    pytest.param(MINIMAL + "search: {timeout: soon}\n", "duration", id="bad-timeout"),
    pytest.param("name: !!python/object/apply:os.system [ls]\n", "not allowed", id="python-tag"),
    pytest.param("name: [unclosed\n", "YAML error", id="syntax"),
    pytest.param("", "empty", id="empty-file"),
    pytest.param("- a\n- b\n", "mapping", id="not-a-mapping"),
    pytest.param("data: {source: sklearn:iris}\n", "name: is required", id="missing-name"),
    pytest.param(MINIMAL + "device: tpu\n", "device", id="bad-device"),
    pytest.param("name: /etc\ndata: {source: sklearn:iris}\n", "name", id="absolute-name"),
    pytest.param('name: "a\\0b"\ndata: {source: sklearn:iris}\n', "name", id="nul-in-name"),
    pytest.param(
        MINIMAL + "search: {space: {train.lr: {low: 1, high: 1}}}\n", "below", id="empty-range"
    ),
    pytest.param(MINIMAL + "search: {trials: 0}\n", "search.trials", id="zero-trials"),
    pytest.param(MINIMAL + "human_level_error: 1.5\n", "human_level_error", id="error-above-1"),
    # hostile and out-of-bound input: refused at the spec, never a crash in the middle of a run
    pytest.param(
        "x: &a [1, 2]\ny: [*a, *a]\n" + MINIMAL, "aliases (*name) are not allowed", id="alias"
    ),
    pytest.param(MINIMAL + "x: " + "[" * 5000 + "]" * 5000 + "\n", "nested more", id="deep-list"),
    pytest.param(
        MINIMAL + "".join("  " * i + f"k{i}:\n" for i in range(3000)), "nested more", id="deep"
    ),
    pytest.param(MINIMAL + "seed: -1\n", "seed", id="negative-seed"),
    pytest.param(MINIMAL + "seed: 99999999999999999999999\n", "seed", id="huge-seed"),
    pytest.param(MINIMAL + "train: {epochs: true}\n", "train.epochs", id="bool-epochs"),
    pytest.param(
        MINIMAL + "search: {trials: true, space: {train.lr: {choices: [0.1]}}}\n",
        "search.trials",
        id="bool-trials",
    ),
    pytest.param(
        MINIMAL + "train: {batch_size: 100000000000000000000000}\n", "batch_size", id="huge-batch"
    ),
    pytest.param(MINIMAL + "train: {lr: .inf}\n", "finite", id="infinite-lr"),
    pytest.param(MINIMAL + "train: {l2: .nan}\n", "finite", id="nan-l2"),
    pytest.param(
        MINIMAL + "search: {space: {train.lr: {low: 1.0e-3, high: .inf, log: true}}}\n",
        "finite",
        id="infinite-bound",
    ),
    pytest.param(
        MINIMAL + "search: {space: {train.lr: {low: -.inf, high: 1}}}\n", "finite", id="neg-inf"
    ),
    pytest.param(
        MINIMAL + "search: {workers: 1000000, space: {train.lr: {choices: [0.1]}}}\n",
        "search.workers",
        id="a-million-workers",
    ),
    pytest.param(
        MINIMAL + "objective: {metrics: [dev_error]}\n", "objective.metrics", id="one-of-several"
    ),
    pytest.param(
        MINIMAL + "objective: {metrics: [dev_error, n_params], directions: [minimize]}\n",
        "directions: 1 given for 2 metrics",
        id="directions-count",
    ),
    pytest.param(
        MINIMAL + "objective: {metric: dev_loss, metrics: [dev_error, n_params]}\n",
        "not both",
        id="metric-and-metrics",
    ),
    pytest.param(
        MINIMAL + "objective: {constraints: [n_params < 5]}\n",
        "'n_params < 5' is not 'METRIC <= NUMBER'",
        id="constraint-syntax",
    ),
    pytest.param(
        MINIMAL + "objective: {metrics: [dev_error, n_params], pick: kne}\n",
        "'kne' is not a pick rule: use knee",
        id="pick-typo",
    ),
    pytest.param(
        MINIMAL + "objective: {pick: {max: {n_params: 10}}}\n",
        "pick chooses among several objectives",
        id="pick-single",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_SPEC_TEXTS)
def test_bad_spec_names_the_key(tmp_path, text, expected):
    assert expected in load_error(tmp_path, text)


def test_error_carries_the_yaml_line(tmp_path):
    message = load_error(tmp_path, MINIMAL + "train:\n  epochs: 10\n  lr: -1\n")
    assert "line 5" in message or ":5:" in message


def test_python_tag_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    load_error(tmp_path, f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    assert not marker.exists()


def test_missing_spec_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_spec(tmp_path / "nope.yaml")


def test_resolved_spec_round_trips(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL + "model: {layers: 3, units: 16}\n"))
    import yaml

    again = spec_from_dict(yaml.safe_load(spec_to_yaml(spec)))
    assert again == spec


def test_model_widths_from_layers_and_units():
    assert ModelSpec(layers=3, units=16).widths == [16, 16, 16]
    assert ModelSpec(hidden=[8, 4]).widths == [8, 4]


def test_direction_inferred_from_metric():
    spec = Spec.model_validate(
        {"name": "t", "data": {"source": "sklearn:iris"}, "objective": {"metric": "dev_accuracy"}}
    )
    assert spec.objective.resolved_direction == "maximize"


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400)]
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_schema_lists_sections():
    schema = Spec.model_json_schema()
    assert {"data", "model", "train", "search"} <= set(schema["properties"])


def test_union_refusals_read_as_one_sentence(tmp_path):
    message = load_error(tmp_path, MINIMAL + "search: {workers: 0}\n")
    assert "search.workers: should be 'auto', or greater than 0 (got 0)" in message
    assert "constrained" not in message


def test_bare_off_means_off(tmp_path):
    text = MINIMAL + "search: {stack: off, space: {train.lr: {choices: [0.1]}}}\n"
    spec = load_spec(write(tmp_path, text))
    assert spec.search.stack == "off"


def test_rerank_needs_two_configurations_and_a_seed():
    from hpsearch.spec import SearchSpec

    space = {"train.lr": {"choices": [0.1]}}
    assert SearchSpec(rerank={"top": 3, "seeds": 2}, space=space).rerank.top == 3
    for bad in ({"top": 1}, {"seeds": 0}, {"top": 2, "seeds": 1, "extra": 1}):
        with pytest.raises(ValueError):
            SearchSpec(rerank=bad, space=space)


def test_a_name_that_cannot_be_a_folder_name_says_why_and_suggests_one(tmp_path):
    message = load_error(tmp_path, "name: my run\ndata: {source: sklearn:iris}\n")
    assert "spec.yaml:1: name:" in message
    assert "run folder" in message and "'my-run'" in message
    assert "pattern" not in message  # not pydantic's regex


def test_a_search_without_a_space_is_refused(tmp_path):
    """Every trial would train the same configuration with the same seed."""
    message = load_error(tmp_path, MINIMAL + "search: {trials: 5}\n")
    assert "search.space: a search needs at least one parameter" in message


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    """Nine nested levels of nine-fold aliases would expand to 9**9 items."""
    import time

    levels = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    started = time.perf_counter()
    message = load_error(tmp_path, "\n".join(levels) + "\n" + MINIMAL)
    assert "aliases" in message and time.perf_counter() - started < 1.0
