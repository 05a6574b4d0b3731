"""The data remedies: attribute strengths, input noise and oversampling of the train split."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_spec
from typer.testing import CliRunner

from hpsearch.cli import app
from hpsearch.data import load_dataset
from hpsearch.errors import InputError
from hpsearch.remedies import (
    _OVERSAMPLED,
    check_remedies,
    class_counts,
    input_scale,
    noise_std,
    oversampled,
    resampling_info,
)
from hpsearch.space import apply_params
from hpsearch.train import Member, predict, train
from tests.test_stacked import assert_same, largest_difference

runner = CliRunner()


def write_csv(folder: Path, x_values: np.ndarray, name: str = "data.csv") -> Path:
    """200 rows: two informative numeric columns, a categorical one, and column x (whatever it
    holds, the label does not depend on it); class 'b' is the minority (about a quarter)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=200), rng.normal(size=200)
    color = rng.choice(["red", "green", "blue"], size=200)
    label = np.where(a + 0.5 * b > 0.7, "b", "a")
    frame = pd.DataFrame({"a": a, "b": b, "color": color, "x": x_values, "label": label})
    path = folder / name
    frame.to_csv(path, index=False)
    return path


def csv_spec(path: Path, **data) -> dict:
    return {"source": str(path), "target": "label", **data}


def fit(spec, data, seed=3):
    (result,) = train([Member(spec, seed)], data)
    return result


# --- attribute strengths --------------------------------------------------------------------


def test_a_strength_scales_every_indicator_of_a_categorical_column(tmp_path):
    path = write_csv(tmp_path, np.arange(200.0))
    spec = make_spec(data=csv_spec(path, feature_weights={"color": 0.5, "a": 2}))
    data = load_dataset(spec.data, 0)
    scale = input_scale(spec.data, data)
    named = dict(zip(data.feature_names, scale.tolist(), strict=True))
    assert named == {
        "a": 2.0,
        "b": 1.0,
        "color=blue": 0.5,
        "color=green": 0.5,
        "color=red": 0.5,
        "x": 1.0,
    }
    assert input_scale(make_spec(data=csv_spec(path)).data, data) is None


@pytest.mark.parametrize("column", ["x", "color"])
def test_strength_zero_gives_the_same_predictions_whatever_the_column_holds(tmp_path, column):
    rng = np.random.default_rng(1)
    predictions = []
    for k, values in enumerate([np.zeros(200), rng.normal(size=200) * 100, np.arange(200.0)]):
        path = write_csv(tmp_path, values if column == "x" else np.zeros(200), f"data{k}.csv")
        if column == "color":  # the categorical column takes other values instead
            frame = pd.read_csv(path)
            frame["color"] = rng.choice(["p", "q", "r"], size=200)  # other rows, same set
            frame.to_csv(path, index=False)
        spec = make_spec(data=csv_spec(path, feature_weights={column: 0}))
        data = load_dataset(spec.data, 0)
        model = fit(spec, data).model
        predictions.append(predict(model, torch.as_tensor(data.splits["test"].X), 64))
    assert torch.equal(predictions[0], predictions[1])
    assert torch.equal(predictions[0], predictions[2])


def test_without_the_zero_strength_the_column_changes_predictions(tmp_path):
    """The check above can fail: with x's strength left at 1, other values of x change the
    model."""
    outputs = []
    for k, values in enumerate([np.zeros(200), np.random.default_rng(1).normal(size=200)]):
        spec = make_spec(data=csv_spec(write_csv(tmp_path, values, f"d{k}.csv")))
        data = load_dataset(spec.data, 0)
        outputs.append(predict(fit(spec, data).model, torch.as_tensor(data.splits["test"].X), 64))
    assert not torch.equal(outputs[0], outputs[1])


def test_the_saved_model_keeps_its_strengths(tmp_path):
    """A trained model predicts with its strengths wherever it is loaded (they are a buffer of
    its state); a model without strengths has no such entry, as before."""
    path = write_csv(tmp_path, np.arange(200.0))
    spec = make_spec(data=csv_spec(path, feature_weights={"a": 0.25}))
    data = load_dataset(spec.data, 0)
    state = fit(spec, data).model.state_dict()
    assert state["input_scale"].tolist()[0] == 0.25
    assert "input_scale" not in fit(make_spec(data=csv_spec(path)), data).model.state_dict()


# --- input noise ----------------------------------------------------------------------------


def test_noise_is_scaled_per_numeric_feature_and_spares_indicators(tmp_path):
    path = write_csv(tmp_path, np.arange(200.0))
    spec = make_spec(data=csv_spec(path, augment={"noise": 0.2}, normalize="none"))
    data = load_dataset(spec.data, 0)
    std = noise_std(spec.data, data)
    train_std = data.splits["train"].X.std(axis=0)
    numeric = [not name.startswith("color=") for name in data.feature_names]
    np.testing.assert_allclose(std[numeric], 0.2 * train_std[numeric], rtol=1e-6)
    assert (std[~np.array(numeric)] == 0).all()
    assert noise_std(make_spec(data=csv_spec(path, augment={"noise": 0})).data, data) is None


def test_noise_changes_training_but_never_evaluation(iris_data):
    plain = make_spec(train={"epochs": 5})
    noisy = make_spec(
        train={"epochs": 5}, data={"source": "sklearn:iris", "augment": {"noise": 0.3}}
    )
    a, b = fit(plain, iris_data), fit(noisy, iris_data)
    assert largest_difference(a, b) > 1e-3  # the train batches differ
    # evaluation sees the dev split as it is: the recorded dev loss is the model's own
    (record,) = [r for r in b.history if r["epoch"] == b.best_epoch]
    assert record["dev_loss"] == pytest.approx(b.metrics["dev_loss"])
    again = fit(noisy, iris_data)  # the noise comes from the trial's seed
    assert [r["dev_loss"] for r in again.history] == [r["dev_loss"] for r in b.history]


def test_members_with_their_own_remedies_train_as_they_would_alone(iris_data):
    from tests.test_stacked import alone, together

    specs = [
        make_spec(data={"source": "sklearn:iris", **extra}, train={"epochs": 6})
        for extra in (
            {},
            {"augment": {"noise": 0.2}},
            {"feature_weights": {"petal length (cm)": 0.0}, "augment": {"noise": 0.05}},
        )
    ]
    seeds = [4, 5, 6]
    for spec, seed, member in zip(specs, seeds, together(specs, iris_data, seeds), strict=True):
        assert_same(member, alone(spec, iris_data, seed))


# --- oversampling ---------------------------------------------------------------------------


@pytest.fixture
def imbalanced(tmp_path):
    path = write_csv(tmp_path, np.arange(200.0))
    return path, load_dataset(make_spec(data=csv_spec(path)).data, 0)


@pytest.mark.parametrize(
    ("oversample", "expected"),
    [("minority", {"a": 1, "b": 1}), ({"b": 2}, {"a": 1, "b": 2}), ({"method": "smote"}, None)],
)
def test_oversampling_grows_the_named_classes(imbalanced, oversample, expected):
    path, data = imbalanced
    spec = make_spec(data=csv_spec(path, oversample=oversample))
    before = class_counts(data.splits["train"].y, data)
    fitted = oversampled(spec.data, data, 0)
    after = class_counts(fitted.y, data)
    expected = expected or {"a": 1, "b": before["a"] / before["b"]}
    assert after["a"] == before["a"]
    assert after["b"] == round(before["b"] * expected["b"]) or after["b"] == before["a"]
    # the original rows come first, unchanged
    np.testing.assert_array_equal(fitted.X[: len(data.splits["train"])], data.splits["train"].X)
    _OVERSAMPLED.clear()  # drawn again, not read from the cache
    assert oversampled(spec.data, data, 0).X.tobytes() == fitted.X.tobytes()  # seeded


def test_smote_rows_are_new_and_take_one_category(imbalanced):
    path, data = imbalanced
    spec = make_spec(data=csv_spec(path, oversample={"method": "smote", "k_neighbors": 3}))
    fitted = oversampled(spec.data, data, 0)
    new = fitted.X[len(data.splits["train"]) :]
    assert len(new) > 0
    originals = {row.tobytes() for row in data.splits["train"].X}
    assert not any(row.tobytes() in originals for row in new)  # interpolated, not copied
    colors = [i for i, name in enumerate(data.feature_names) if name.startswith("color=")]
    assert (new[:, colors].sum(axis=1) == 1).all()
    assert set(np.unique(new[:, colors])) == {0.0, 1.0}


def test_oversampling_touches_the_train_split_only(tmp_path):
    """split.json's dev and test hashes stay those of a run without remedies; it records the
    train rows before and after."""
    path = write_csv(tmp_path, np.arange(200.0))

    def run(name, **data):
        spec = {
            "name": name,
            "device": "cpu",
            "data": csv_spec(path, **data),
            "model": {"hidden": [8]},
            "train": {"epochs": 2},
        }
        spec_path = tmp_path / f"{name}.yaml"
        spec_path.write_text(json.dumps(spec))
        result = runner.invoke(app, ["run", str(spec_path), "--runs-dir", str(tmp_path / "runs")])
        assert result.exit_code == 0, result.output
        (folder,) = (tmp_path / "runs").glob(f"{name}-*")
        return json.loads((folder / "split.json").read_text()), folder

    plain, _ = run("plain")
    remedied, folder = run("remedied", oversample="minority", augment={"noise": 0.1})
    for split in ("train", "dev", "test"):
        assert remedied["splits"][split]["hash"] == plain["splits"][split]["hash"]
    sampled = remedied["oversample"]
    assert sampled["rows_before"] == plain["splits"]["train"]["size"]
    assert sampled["after"]["a"] == sampled["after"]["b"] == sampled["before"]["a"]
    assert "oversample" not in plain
    params = json.loads((folder / "trials" / "0" / "params.json").read_text())
    assert params["oversample"]["rows_after"] == sampled["rows_after"]


def test_training_judges_the_train_split_itself(imbalanced):
    """Oversampled copies are fitted on, but the train error is measured on the train rows."""
    path, data = imbalanced
    spec = make_spec(data=csv_spec(path, oversample={"b": 3}), train={"epochs": 3})
    result = fit(spec, data)
    from hpsearch.metrics import evaluate, on_device

    measured = evaluate(
        result.model, on_device(data.splits["train"], torch.device("cpu")), "cross_entropy", data
    )
    assert result.metrics["train_error"] == pytest.approx(measured["error"])


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"feature_weights": {"colour": 0}},
            "'colour' is not a feature column; did you mean 'color'",
        ),
        ({"feature_weights": {"label": 0}}, "'label' is not a feature column"),
        ({"oversample": {"c": 2}}, "no class 'c' in the target"),
        ({"oversample": {"method": "smote", "k_neighbors": 500}}, "k_neighbors (500)"),
    ],
)
def test_remedies_that_do_not_fit_the_data_are_input_errors(imbalanced, data, message):
    path, loaded = imbalanced
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_remedies(make_spec(data=csv_spec(path, **data)).data, loaded)


def test_oversampling_a_regression_is_an_input_error():
    spec = make_spec(data={"source": "sklearn:diabetes", "oversample": "minority"})
    with pytest.raises(InputError, match="needs a classification task"):
        check_remedies(spec.data, load_dataset(spec.data, 0))


def test_smote_without_imbalanced_learn_says_how_to_install(imbalanced, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_imblearn(name, *args, **kwargs):
        if name.startswith("imblearn"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_imblearn)
    path, data = imbalanced
    spec = make_spec(data=csv_spec(path, oversample={"method": "smote"}))
    with pytest.raises(InputError, match=r"pip install 'hpsearch\[smote\]'"):
        check_remedies(spec.data, data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"feature_weights": {"a": -1}},
            "data.feature_weights.a: Input should be greater than or equal to 0",
        ),
        ({"augment": {"noise": -0.1}}, "data.augment.noise"),
        ({"augment": {"sigma": 0.1}}, "unknown key 'sigma'"),
        ({"oversample": "majority"}, "data.oversample.classes"),
        ({"oversample": {"b": 0.5}}, "greater than or equal to 1"),
        ({"oversample": {"method": "adasyn"}}, "data.oversample.method"),
    ],
)
def test_remedy_keys_are_validated_like_the_others(data, message):
    from hpsearch.spec import spec_from_dict

    raw = {"name": "x", "data": {"source": "sklearn:iris", **data}}
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("(", r"\(")):
        spec_from_dict(raw)


def test_each_remedy_is_searchable(imbalanced):
    path, data = imbalanced
    spec = make_spec(data=csv_spec(path))
    applied = apply_params(
        spec,
        {
            "data.feature_weights.x": 0.0,
            "data.augment.noise": 0.1,
            "data.oversample": "minority",
        },
    )
    assert applied.data.feature_weights == {"x": 0.0}
    assert applied.data.augment.noise == 0.1
    assert applied.data.oversample.classes == "minority"
    assert resampling_info(applied.data, data, 0)["rows_after"] > len(data.splits["train"])


def test_a_searched_column_that_does_not_exist_stops_the_run(tmp_path):
    path = write_csv(tmp_path, np.arange(200.0))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        f"name: s\ndata: {{source: {path}, target: label}}\n"
        "search:\n  space:\n    data.feature_weights.colr: {low: 0, high: 2}\n"
    )
    result = runner.invoke(app, ["run", str(spec_path), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "search.space[data.feature_weights.colr]" in result.output
    assert "did you mean 'color'" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("stop_at", [3, 17])
def test_a_stopped_stack_with_remedies_resumes_exactly(iris_data, stop_at):
    """The noise generators travel in the checkpoint, with the rest of a member's state; a
    frozen layer stays frozen after a resume."""
    from tests.test_train import _same_training, stopped_and_resumed

    data = {"source": "sklearn:iris", "oversample": {"0": 2}}
    specs = [
        make_spec(
            data={**data, **extra},
            model={"hidden": [16, 8], "freeze": 1, "norm": "batch"},
            train={"epochs": 5, "lr": lr},
        )
        for extra, lr in (
            ({"augment": {"noise": 0.3}}, 0.01),
            ({"feature_weights": {"sepal width (cm)": 0.0}}, 0.02),
            ({"augment": {"noise": 0.1}, "feature_weights": {"petal width (cm)": 3.0}}, 0.03),
        )
    ]
    members = [Member(spec, seed) for spec, seed in zip(specs, (1, 2, 3), strict=True)]
    whole, resumed = stopped_and_resumed(members, iris_data, stop_at)
    for again, expected in zip(train(resumed, iris_data), whole, strict=True):
        _same_training(again, expected)
