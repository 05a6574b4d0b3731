"""Transfer and freezing: model.init_from loads an earlier model's matching layers, model.freeze
keeps the first hidden layers as they start."""

import json
from pathlib import Path

import pytest
import torch
from conftest import make_spec
from typer.testing import CliRunner

from hpsearch.cli import app
from hpsearch.data import load_dataset
from hpsearch.errors import InputError
from hpsearch.runs import RunFolder
from hpsearch.spec import spec_from_dict
from hpsearch.train import Member, train
from hpsearch.transfer import plan, resolve_init_from, weights_file

runner = CliRunner()


def fit(spec, data, seed=5):
    (result,) = train([Member(spec, seed)], data)
    return result


@pytest.fixture(scope="module")
def source(tmp_path_factory, iris_data):
    """Weights of a trained [16, 8] iris model, saved as a file."""
    spec = make_spec(model={"hidden": [16, 8]}, train={"epochs": 5})
    path = tmp_path_factory.mktemp("source") / "model.pt"
    torch.save(fit(spec, iris_data).model.state_dict(), path)
    return path


def started_from(path, **model):
    return make_spec(
        model={"hidden": [16, 8], "init_from": str(path), **model},
        train={"epochs": 8, "lr": 0.05, **model.pop("train", {})},
    )


@pytest.mark.parametrize(
    ("model", "train_settings"),
    [
        ({}, {}),
        ({"norm": "batch"}, {}),
        ({}, {"optimizer": "adamw", "l2": 0.5, "grad_clip": 0.1}),
        ({}, {"optimizer": "momentum", "l1": 0.1}),
    ],
)
def test_frozen_layers_stay_bit_identical_and_the_rest_learn(
    tmp_path, iris_data, model, train_settings
):
    spec0 = make_spec(model={"hidden": [16, 8], **model}, train={"epochs": 3})
    path = tmp_path / "model.pt"
    torch.save(fit(spec0, iris_data).model.state_dict(), path)
    before = torch.load(path)
    spec = make_spec(
        model={"hidden": [16, 8], "init_from": str(path), "freeze": 1, **model},
        train={"epochs": 8, "lr": 0.05, **train_settings},
    )
    after = fit(spec, iris_data).model.state_dict()
    frozen = [key for key in after if key.startswith("hidden.0.")]
    assert frozen
    for key in frozen:  # weights, biases, norm scales and batch-norm statistics
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(after[key], before[key]), key
    for key in ("hidden.1.linear.weight", "output.weight"):
        assert not torch.equal(after[key], before[key]), key


def test_without_freeze_every_loaded_layer_learns(source, iris_data):
    before = torch.load(source)
    after = fit(started_from(source), iris_data).model.state_dict()
    assert not torch.equal(after["hidden.0.linear.weight"], before["hidden.0.linear.weight"])


def test_loaded_layers_are_the_earlier_models(source, iris_data):
    """With no training at all (an lr too small to move a float32), the model is the source."""
    spec = make_spec(
        model={"hidden": [16, 8], "init_from": str(source)},
        train={"epochs": 1, "lr": 1e-30, "optimizer": "sgd"},
    )
    after = fit(spec, iris_data).model.state_dict()
    before = torch.load(source)
    for key in before:
        assert torch.equal(after[key], before[key]), key


def test_other_features_are_an_error(source):
    data = load_dataset(make_spec(data={"source": "sklearn:wine"}).data, 0)
    spec = make_spec(model={"hidden": [16, 8], "init_from": str(source)})
    with pytest.raises(InputError, match="takes 4 input features and this data has 13"):
        plan(spec, data)


def test_a_new_output_layer_when_the_classes_differ(tmp_path):
    """Three classes, then two, on the same features: the hidden layers load, the output
    layer starts fresh (and trains)."""
    from tests.test_remedies import csv_spec, write_csv

    path = write_csv(tmp_path, [float(i) for i in range(200)])
    import pandas as pd

    frame = pd.read_csv(path)
    frame["label"] = frame["label"].where(frame["a"] < 1.2, "c")  # a third class
    three = tmp_path / "three.csv"
    frame.to_csv(three, index=False)
    first = make_spec(data=csv_spec(three), model={"hidden": [8]}, train={"epochs": 3})
    weights = tmp_path / "three.pt"
    torch.save(fit(first, load_dataset(first.data, 0)).model.state_dict(), weights)
    second = make_spec(data=csv_spec(path), model={"hidden": [8], "init_from": str(weights)})
    data = load_dataset(second.data, 0)
    assert plan(second, data) == {
        "source": str(weights),
        "loaded": ["hidden.0"],
        "new": ["output"],
        "freeze": 0,
    }
    model = fit(second, data).model.state_dict()
    assert model["output.weight"].shape == (1, 8)


def test_more_layers_start_fresh_and_the_output_too(source, iris_data):
    spec = make_spec(model={"hidden": [16, 8, 8], "init_from": str(source), "freeze": 2})
    taken = plan(spec, iris_data)
    assert taken["loaded"] == ["hidden.0", "hidden.1"]
    assert taken["new"] == ["hidden.2", "output"]


def test_a_shape_that_differs_is_an_error_naming_the_layer(source, iris_data):
    spec = make_spec(model={"hidden": [16, 32], "init_from": str(source)})
    with pytest.raises(
        InputError, match=r"hidden layer 1 is 16 -> 8 in the earlier model and 16 -> 32 here"
    ):
        plan(spec, iris_data)


def test_freezing_more_than_was_loaded_is_an_error(source, iris_data):
    spec = make_spec(model={"hidden": [16, 8, 4], "init_from": str(source), "freeze": 3})
    with pytest.raises(InputError, match="only 2 come from model.init_from"):
        plan(spec, iris_data)


def test_freeze_beyond_the_model_is_refused_by_the_spec():
    raw = {"name": "x", "data": {"source": "sklearn:iris"}, "model": {"hidden": [8], "freeze": 2}}
    with pytest.raises(InputError, match="freeze: 2 hidden layers, but the model has 1"):
        spec_from_dict(raw)


def test_freeze_is_searchable():
    from hpsearch.space import apply_params

    spec = make_spec(model={"hidden": [8, 8]})
    assert apply_params(spec, {"model.freeze": 2}).model.freeze == 2
    with pytest.raises(InputError, match="freeze"):
        apply_params(spec, {"model.freeze": 3})


# --- naming the earlier model, through the CLI ----------------------------------------------


def write(folder: Path, name: str, **model) -> Path:
    spec = {
        "name": name,
        "device": "cpu",
        "data": {"source": "sklearn:iris"},
        "model": {"hidden": [8], **model},
        "train": {"epochs": 3},
    }
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(spec))
    return path


def run(tmp_path, spec: Path, *extra):
    return runner.invoke(app, ["run", str(spec), "--runs-dir", str(tmp_path / "runs"), *extra])


@pytest.fixture
def first_run(tmp_path):
    result = run(tmp_path, write(tmp_path, "first"))
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "runs").glob("first-*")
    return folder


@pytest.mark.parametrize("how", ["spec name", "folder name", "folder path", "trial", "latest"])
def test_init_from_names_a_run_its_trial_or_the_latest(tmp_path, first_run, how):
    named = {
        "spec name": "first",
        "folder name": first_run.name,
        "folder path": str(first_run),
        "trial": f"{first_run.name}/trials/0",
        "latest": "latest",
    }[how]
    result = run(tmp_path, write(tmp_path, "second", init_from=named, freeze=1))
    assert result.exit_code == 0, result.output
    (second,) = (tmp_path / "runs").glob("second-*")
    expected = str((first_run / "trials" / "0" / "model.pt").resolve())
    # the run folder's spec names the file, whatever runs come later
    assert f"init_from: {expected}" in (second / "spec.yaml").read_text()
    params = json.loads((second / "trials" / "0" / "params.json").read_text())
    assert params["init_from"] == {
        "source": expected,
        "loaded": ["hidden.0", "output"],
        "new": [],
        "freeze": 1,
    }
    report = runner.invoke(app, ["report", str(second)])
    assert f"weights from  {first_run.name}/trials/0 (loaded hidden.0, output; first 1" in (
        report.output
    )


def test_a_weights_file_is_relative_to_the_spec(tmp_path, first_run):
    copy = tmp_path / "models" / "start.pt"
    copy.parent.mkdir()
    copy.write_bytes((first_run / "trials" / "0" / "model.pt").read_bytes())
    spec = write(tmp_path / "models", "third", init_from="start.pt")
    result = run(tmp_path, spec)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("init_from", "model", "message"),
    [
        ("nothing-here", {}, "no run folder 'nothing-here' and no finished run of a spec named"),
        ("missing.pt", {}, "missing.pt'"),
        ("{run}/trials/7", {}, "trial 7 of first-"),
        ("first", {"hidden": [9]}, "hidden layer 0 is 4 -> 8 in the earlier model and 4 -> 9 here"),
    ],
)
def test_init_from_errors_stop_before_any_run_folder(
    tmp_path, first_run, init_from, model, message
):
    spec = write(tmp_path, "bad", init_from=init_from.format(run=first_run.name), **model)
    result = run(tmp_path, spec)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "bad.yaml:1: model.init_from: " in result.output
    assert "Traceback" not in result.output
    assert not list((tmp_path / "runs").glob("bad-*"))


def test_a_searched_width_that_cannot_load_is_named(tmp_path, first_run):
    spec = tmp_path / "search.yaml"
    spec.write_text(
        "name: s\ndevice: cpu\ndata: {source: sklearn:iris}\n"
        "model: {hidden: [8], init_from: first}\n"
        "search: {space: {model.hidden: {choices: [[8], [12]]}}}\n"
    )
    result = run(tmp_path, spec)
    assert result.exit_code == 2
    assert "search.space[model.hidden]: choice [12]" in result.output


def test_resolution_of_a_bare_file(tmp_path):
    with pytest.raises(InputError, match="no weights file"):
        weights_file(str(tmp_path / "x.pt"), tmp_path)
    spec = make_spec()
    assert resolve_init_from(spec, tmp_path) is spec  # nothing named, nothing to do


def test_a_run_without_a_summary_is_not_a_source(tmp_path):
    folder = RunFolder(tmp_path / "runs" / "half-20260101-000000")
    folder.root.mkdir(parents=True)
    folder.spec.write_text("name: half\n")
    with pytest.raises(InputError, match="no best trial yet"):
        weights_file(str(folder.root), tmp_path / "runs")
