from pathlib import Path

import pytest

from hpsearch.spec import Spec

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def make_spec(**overrides) -> Spec:
    """A tiny, fast spec on iris; keyword sections are merged over the defaults."""
    raw = {
        "name": "tiny",
        "seed": 0,
        "device": "cpu",
        "data": {"source": "sklearn:iris"},
        "model": {"hidden": [16]},
        "train": {"lr": 0.01, "epochs": 30, "batch_size": 16, "early_stopping": {"patience": 5}},
    }
    for section, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **value}
        else:
            raw[section] = value
    return Spec.model_validate(raw)


@pytest.fixture
def iris_spec() -> Spec:
    return make_spec()


@pytest.fixture(scope="session")
def iris_data():
    from hpsearch.data import load_dataset

    return load_dataset(make_spec().data, seed=0)


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec file (YAML text) into tmp_path and return its path."""

    def write(text: str, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
