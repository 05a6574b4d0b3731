import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from hpsearch.cli import app
from hpsearch.errors import InputError
from hpsearch.preflight import prepare
from hpsearch.spec import Spec, load_spec
from hpsearch.starter import (
    budget,
    hidden_choices,
    inspect_data,
    profile_column,
    spec_name,
    starter_spec,
    write_starter,
)
from tests.conftest import CONFIGS

PENGUINS = CONFIGS / "data" / "penguins.csv"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def run_spec(spec, runs_dir, *options):
    result = invoke("run", spec, "--runs-dir", runs_dir, "--quiet", "--json", *options)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def run_briefly(spec, runs_dir):
    """2 trials of 20 epochs, one at a time in this process (no worker start-up)."""
    text = re.sub(r"^  epochs: \d+", "  epochs: 20", spec.read_text(), flags=re.M)
    spec.write_text(text)
    return run_spec(spec, runs_dir, "--trials", "2", "--mode", "panda")


def regression_csv(path, rows=300):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 3))
    price = 3.0 * x[:, 0] - x[:, 1] ** 2 + 0.1 * rng.normal(size=rows) + 50.0
    pd.DataFrame(x, columns=["a", "b", "c"]).assign(price=price).to_csv(path, index=False)
    return path


def classes_csv(path, rows=200, **extra):
    """Two numeric features and a label column `y` (~70/30), plus any extra columns."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(rows, 2))
    y = np.where(x[:, 0] > -0.5, "yes", "no")
    frame = pd.DataFrame(x, columns=["f1", "f2"]).assign(**extra, y=y)
    frame.to_csv(path, index=False)
    return path


# --- penguins: classification with missing values ---------------------------------------------


def test_penguins_profile():
    profile = inspect_data(PENGUINS, "species")
    assert profile.rows == 344
    assert profile.target == "species" and profile.target_reason is None
    assert profile.task == "multiclass"
    assert profile.class_counts == {"Adelie": 152, "Chinstrap": 68, "Gentoo": 124}
    assert profile.missing == {
        "bill_length_mm": 2,
        "bill_depth_mm": 2,
        "flipper_length_mm": 2,
        "body_mass_g": 2,
        "sex": 11,
    }
    kinds = {c.name: c.kind for c in profile.columns}
    assert kinds["island"] == kinds["sex"] == "categorical"
    assert kinds["body_mass_g"] == "numeric"
    assert profile.inputs == 10  # 5 numeric + island (3) + sex (2)


def test_penguins_spec_round_trips_and_validates(tmp_path):
    spec = write_starter(PENGUINS, tmp_path / "specs" / "penguins.yaml", target="species")
    raw = yaml.safe_load(spec.read_text())  # plain YAML 1.1 reads it the same way
    assert raw["name"] == "penguins" and raw["seed"] == 0
    assert raw["data"]["target"] == "species"
    assert raw["data"]["impute"] == "median"
    assert raw["data"]["normalize"] == "standard"
    assert raw["objective"] == {"metric": "dev_error"}
    assert raw["search"]["space"]["train.lr"] == {"low": 1e-4, "high": 1e-1, "log": True}
    assert raw["search"]["space"]["train.l2"] == {"low": 1e-6, "high": 1e-2, "log": True}
    assert raw["train"]["early_stopping"]["patience"] > 0
    loaded = load_spec(spec)
    assert loaded.data.source == str(PENGUINS.resolve())  # relative to the spec's folder
    assert prepare(loaded).task == "multiclass"
    result = invoke("validate", spec)
    assert result.exit_code == 0, result.output
    assert "multiclass task, 10 features" in result.stdout


def test_penguins_header_says_what_was_seen():
    text = starter_spec(PENGUINS, CONFIGS / "penguins-start.yaml", "species")
    header = text.split("\nname:")[0]
    assert "344 rows" in header
    assert "multiclass" in header
    assert "Adelie: 152" in header
    assert "sex 11" in header
    assert "# weights: balanced" in text  # Chinstrap is under half of Adelie
    assert "source: data/penguins.csv" in text
    assert all(len(line) <= 100 for line in text.splitlines())


def test_penguins_spec_runs_as_written_with_two_trials(tmp_path):
    spec = write_starter(PENGUINS, tmp_path / "penguins.yaml", target="species")
    summary = run_spec(spec, tmp_path / "runs", "--trials", "2")  # caviar workers, as written
    assert summary["counts"]["complete"] == 2
    assert summary["best"]["metrics"]["dev_error"] < 0.5


@pytest.mark.slow
def test_penguins_spec_runs_as_written(tmp_path):
    spec = write_starter(PENGUINS, tmp_path / "penguins.yaml", target="species")
    summary = run_spec(spec, tmp_path / "runs")
    assert summary["counts"]["complete"] == yaml.safe_load(spec.read_text())["search"]["trials"]
    assert summary["best"]["metrics"]["dev_error"] < 0.1


# --- regression -------------------------------------------------------------------------------


def test_regression_csv_gives_a_regression_spec_that_runs(tmp_path):
    data = regression_csv(tmp_path / "prices.csv")
    profile = inspect_data(data)
    assert profile.task == "regression" and profile.target == "price"
    assert profile.class_counts is None
    low, high, _, _ = profile.target_range
    assert low < 50 < high
    spec = write_starter(data, tmp_path / "prices.yaml")
    text = spec.read_text()
    assert "regression" in text.split("\nname:")[0]
    assert "impute" not in text and "weights: balanced" not in text
    assert prepare(load_spec(spec)).task == "regression"
    summary = run_briefly(spec, tmp_path / "runs")
    assert summary["counts"]["complete"] == 2


def test_few_whole_numbers_are_classes_as_task_auto_decides(tmp_path):
    """The starter applies data.py's rule: at most 20 distinct integers is classification."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=100), "stars": rng.integers(1, 6, size=100)})
    frame.to_csv(tmp_path / "ratings.csv", index=False)
    assert inspect_data(tmp_path / "ratings.csv").task == "multiclass"
    frame.assign(stars=rng.integers(0, 50, size=100)).to_csv(tmp_path / "wide.csv", index=False)
    assert inspect_data(tmp_path / "wide.csv").task == "regression"


# --- missing values ---------------------------------------------------------------------------


def test_missing_numeric_and_categorical_values_are_imputed_and_run(tmp_path):
    rng = np.random.default_rng(2)
    colour = rng.choice(["red", "green", "blue"], size=200).astype(object)
    colour[::17] = None
    data = classes_csv(tmp_path / "mixed.csv", colour=colour)
    frame = pd.read_csv(data)
    frame.loc[::13, "f2"] = np.nan
    frame.to_csv(data, index=False)
    profile = inspect_data(data, "y")
    assert profile.missing == {"f2": 16, "colour": 12}
    spec = write_starter(data, tmp_path / "mixed.yaml", target="y")
    assert yaml.safe_load(spec.read_text())["data"]["impute"] == "median"
    assert "f2 16, colour 12" in spec.read_text()
    summary = run_briefly(spec, tmp_path / "runs")
    assert summary["counts"]["complete"] == 2


def test_only_categorical_values_missing_imputes_most_frequent(tmp_path):
    colour = np.array(["red", "blue"] * 100, dtype=object)
    colour[::9] = None
    data = classes_csv(tmp_path / "cats.csv", colour=colour)
    spec = write_starter(data, tmp_path / "cats.yaml", target="y")
    assert yaml.safe_load(spec.read_text())["data"]["impute"] == "most_frequent"
    prepare(load_spec(spec))


def test_no_missing_values_no_impute(tmp_path):
    data = classes_csv(tmp_path / "clean.csv")
    assert "impute" not in yaml.safe_load(starter_spec(data, tmp_path / "s.yaml", "y"))["data"]


# --- the target -------------------------------------------------------------------------------


def test_target_guessed_from_its_name_and_said_so(tmp_path):
    frame = pd.DataFrame({"Label": ["a", "b"] * 30, "x1": range(60), "x2": [0.5, 1.5] * 30})
    frame.to_csv(tmp_path / "named.csv", index=False)
    profile = inspect_data(tmp_path / "named.csv")
    assert profile.target == "Label" and profile.target_reason
    lines = starter_spec(tmp_path / "named.csv", tmp_path / "s.yaml", None).splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith("  target:"))
    assert lines[at].startswith("  target: Label ")
    assert "picked: named like a target; change it" in lines[at]
    assert "target: Label (picked: named like a target)" in "\n".join(lines[:at])


def test_target_defaults_to_the_last_usable_column(tmp_path):
    data = regression_csv(tmp_path / "plain.csv")
    frame = pd.read_csv(data).rename(columns={"price": "amount"})
    frame.to_csv(data, index=False)
    assert inspect_data(data).target == "amount"
    frame.assign(row=range(len(frame))).to_csv(data, index=False)  # a trailing row number
    profile = inspect_data(data)
    assert profile.target == "amount"
    assert "row" in [c.name for c in profile.dropped]


def test_a_target_not_in_the_data_lists_the_columns():
    with pytest.raises(InputError) as error:
        inspect_data(PENGUINS, "speces")
    message = str(error.value)
    assert "'speces'" in message and str(PENGUINS) in message
    assert "species, island, bill_length_mm" in message


def test_a_target_with_missing_values_is_refused(tmp_path):
    frame = pd.DataFrame({"x": range(30), "y": [1.5, None, 2.5] * 10})
    frame.to_csv(tmp_path / "holes.csv", index=False)
    with pytest.raises(InputError, match="missing value.*--target"):
        inspect_data(tmp_path / "holes.csv")


# --- columns that are not features ------------------------------------------------------------


def test_id_like_and_constant_columns_are_dropped_with_a_reason(tmp_path):
    rows = 200
    data = classes_csv(
        tmp_path / "ids.csv",
        rows=rows,
        customer_id=np.arange(rows) % 50 + 1000,  # repeats, but named like an id
        name=[f"person {i}" for i in range(rows)],  # every value unique
        row=np.arange(rows),  # a row number
        source="survey",  # constant
    )
    profile = inspect_data(data, "y")
    reasons = {c.name: c.drop_reason for c in profile.dropped}
    assert set(reasons) == {"customer_id", "name", "row", "source"}
    assert [c.name for c in profile.features] == ["f1", "f2"]
    spec = write_starter(data, tmp_path / "ids.yaml", target="y")
    text = spec.read_text()
    assert load_spec(spec).data.drop == ["customer_id", "name", "row", "source"]
    for name, reason in reasons.items():
        assert f"    - {name}" in text and reason in text
    assert prepare(load_spec(spec)).n_features == 2


@pytest.mark.parametrize(
    ("values", "name", "kind"),
    [
        (list(range(1, 41)), "PassengerId", "id"),
        ([3, 1, 2] * 10, "user_id", "id"),
        ([3, 1, 2] * 10, "paid", "numeric"),
        ([f"t{i}" for i in range(30)], "ticket", "id"),
        (["a", "b", "c"] * 10, "grade", "categorical"),
        ([7] * 30, "flag", "constant"),
        ([None] * 30, "empty", "empty"),
        ([0.5 * i for i in range(30)], "index", "numeric"),  # not whole numbers
    ],
)
def test_column_kinds(values, name, kind):
    assert profile_column(pd.Series(values, name=name)).kind == kind


# --- files ------------------------------------------------------------------------------------


def test_no_overwrite_without_force(tmp_path):
    output = tmp_path / "spec.yaml"
    output.write_text("keep me\n")
    with pytest.raises(InputError) as error:
        write_starter(PENGUINS, output, target="species")
    assert str(output) in str(error.value) and "--force" in str(error.value)
    assert output.read_text() == "keep me\n"
    write_starter(PENGUINS, output, target="species", force=True)
    assert load_spec(output).data.target == "species"


def test_a_folder_as_output_gets_the_data_files_name(tmp_path):
    written = write_starter(PENGUINS, tmp_path, target="species")
    assert written == tmp_path / "penguins.yaml"
    assert load_spec(written).name == "penguins"


@pytest.mark.parametrize("name", ["absent.csv", "notes.txt"])
def test_missing_or_unsupported_data_files_are_named(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".txt"):
        path.write_text("a,b\n1,2\n")
    with pytest.raises(InputError) as error:
        inspect_data(path)
    assert str(path) in str(error.value)
    assert "data.source" not in str(error.value)  # there is no spec yet to point at


def test_an_unparseable_file_is_named(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="broken.parquet.*cannot parse"):
        inspect_data(path)


def test_parquet_and_npz_are_read_as_runs_read_them(tmp_path):
    frame = pd.read_csv(PENGUINS)
    frame.to_parquet(tmp_path / "penguins.parquet")
    assert inspect_data(tmp_path / "penguins.parquet", "species").class_counts == (
        inspect_data(PENGUINS, "species").class_counts
    )
    arrays = {"a": np.arange(40) * 0.5, "b": np.tile([1.0, 2.0], 20), "label": np.tile([0, 1], 20)}
    np.savez(tmp_path / "arrays.npz", **arrays)
    spec = write_starter(tmp_path / "arrays.npz", tmp_path / "arrays.yaml")
    assert load_spec(spec).data.target == "label"
    assert prepare(load_spec(spec)).task == "binary"


def test_data_source_is_relative_to_the_spec(tmp_path):
    (tmp_path / "data").mkdir()
    data = regression_csv(tmp_path / "data" / "prices.csv")
    spec = write_starter(data, tmp_path / "specs" / "deep" / "prices.yaml")
    assert yaml.safe_load(spec.read_text())["data"]["source"] == "../../data/prices.csv"
    assert load_spec(spec).data.source == str(data.resolve())


def test_awkward_names_round_trip(tmp_path):
    """Column names YAML would read as numbers, booleans or syntax are quoted."""
    frame = pd.DataFrame(
        {"1e3": np.arange(40) * 0.1, "a: b, #c": ["u", "v"] * 20, "yes": [0, 1, 1, 0] * 10}
    )
    frame.to_csv(tmp_path / "odd names (v2).csv", index=False)
    spec = write_starter(tmp_path / "odd names (v2).csv", tmp_path / "odd.yaml")
    loaded = load_spec(spec)
    assert loaded.name == "odd-names-v2"
    assert loaded.data.target == "yes"
    assert prepare(loaded).n_features == 3  # 1e3, and a: b, #c one-hot (2)


@pytest.mark.parametrize(
    ("stem", "name"), [("penguins", "penguins"), ("my data (v2)", "my-data-v2"), ("__x", "x")]
)
def test_spec_name_fits_the_pattern(tmp_path, stem, name):
    assert spec_name(tmp_path / f"{stem}.csv") == name
    Spec.model_validate({"name": spec_name(tmp_path / f"{stem}.csv"), "data": {"source": "a.csv"}})


def test_spec_name_never_empty(tmp_path):
    assert spec_name(tmp_path / "---.csv") == "starter"


# --- the budget and the space -----------------------------------------------------------------


def test_budget_small_data_more_epochs_large_data_fewer():
    small, medium, large = budget(300, 10), budget(50_000, 10), budget(500_000, 10)
    assert small.epochs >= 100 and small.trials >= 20
    assert small.epochs > medium.epochs > large.epochs
    assert small.trials >= medium.trials >= large.trials
    assert small.batch_size < medium.batch_size < large.batch_size  # fewer steps on big data
    for plan in (small, medium, large):
        assert plan.patience < plan.epochs


def test_budget_cuts_epochs_for_wide_data():
    assert budget(70_000, 784, 10).epochs < budget(70_000, 20, 10).epochs


def test_hidden_widths_scale_with_the_inputs():
    assert hidden_choices(10) == [[16], [32], [32, 16]]
    assert hidden_choices(100) == [[128], [256], [256, 128]]
    assert hidden_choices(2)[0] == [8]
    assert max(max(c) for c in hidden_choices(10_000)) == 256
