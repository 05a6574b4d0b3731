"""The quickstart config: its model matches scikit-learn's MLP defaults; its search beats it."""

import json
import warnings

import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from typer.testing import CliRunner

from hpsearch.cli import app
from hpsearch.data import load_dataset
from hpsearch.objective import configuration_seed
from hpsearch.spec import load_spec
from hpsearch.train import train_model
from tests.conftest import CONFIGS


@pytest.fixture(scope="module")
def quickstart():
    spec = load_spec(CONFIGS / "quickstart.yaml")
    return spec, load_dataset(spec.data, spec.seed)


@pytest.fixture(scope="module")
def single_trial_accuracy(quickstart):
    spec, data = quickstart
    single = spec.model_copy(update={"search": None})
    return train_model(single, data, configuration_seed(spec.seed, {})).metrics["dev_accuracy"]


def test_single_model_matches_sklearn_mlp_defaults(quickstart, single_trial_accuracy):
    _, data = quickstart
    train, dev = data.splits["train"], data.splits["dev"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sklearn_accuracy = MLPClassifier(random_state=0).fit(train.X, train.y).score(dev.X, dev.y)
    assert single_trial_accuracy >= sklearn_accuracy - 0.01


def test_quickstart_search_beats_the_single_model(tmp_path, single_trial_accuracy):
    result = CliRunner().invoke(
        app, ["run", str(CONFIGS / "quickstart.yaml"), "--runs-dir", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["counts"]["complete"] == 12
    assert summary["best"]["metrics"]["dev_accuracy"] >= single_trial_accuracy
