import os
import uuid
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


def write_mixed_groups(folder: Path) -> Path:
    """Data from two distributions, one much noisier ('hard'), and a spec that groups by it."""
    import numpy as np
    import pandas as pd
    import yaml

    rng = np.random.default_rng(0)
    n = 600
    x = rng.normal(size=(n, 3))
    group = np.where(np.arange(n) % 3 == 0, "hard", "easy")
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    flip = (group == "hard") & (rng.random(n) < 0.35)
    y[flip] = 1 - y[flip]
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(source=group, y=y)
    frame.to_csv(folder / "mixed.csv", index=False)
    spec = {
        "name": "mixed",
        "device": "cpu",
        "data": {"source": "mixed.csv", "target": "y", "group": "source"},
        "model": {"hidden": [16]},
        "train": {"epochs": 30, "lr": 0.01},
        "human_level_error": 0.0,
    }
    path = folder / "mixed.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def write_split_column_data(folder: Path) -> Path:
    """Train rows from the 'lab' distribution only; dev and test from 'lab' and 'field', where
    the label follows another feature: the lecture's data mismatch."""
    import numpy as np
    import pandas as pd
    import yaml

    rng = np.random.default_rng(0)
    n = 900
    x = rng.normal(size=(n, 2))
    site = np.where(np.arange(n) % 3 == 0, "field", "lab")
    y = np.where(site == "lab", x[:, 0] > 0, x[:, 1] > 0).astype(int)
    fold = np.where(site == "field", np.where(np.arange(n) % 2 == 0, "dev", "test"), "train")
    lab = np.flatnonzero(site == "lab")
    fold[lab[::6]] = "dev"
    fold[lab[1::6]] = "test"
    frame = pd.DataFrame(x, columns=["a", "b"]).assign(site=site, fold=fold, y=y)
    frame.to_csv(folder / "mismatch.csv", index=False)
    spec = {
        "name": "mismatch",
        "device": "cpu",
        "data": {
            "source": "mismatch.csv",
            "target": "y",
            "group": "site",
            "split": {"column": "fold"},
        },
        "model": {"hidden": [16]},
        "train": {"epochs": 30, "lr": 0.01},
        "human_level_error": 0.0,
    }
    path = folder / "mismatch.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# PostgreSQL, for the distributed, database-fault and Slurm tests
SERVER = os.environ.get("HPSEARCH_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")


@pytest.fixture
def database():
    """A fresh database for one test; skipped without a server unless CI requires one."""
    psycopg = pytest.importorskip("psycopg")
    admin = SERVER.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    name = f"hpsearch_test_{uuid.uuid4().hex[:12]}"
    try:
        connection = psycopg.connect(admin, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if os.environ.get("HPSEARCH_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required here but unreachable: {exc}")
        pytest.skip(f"no PostgreSQL server at {admin} ({exc.__class__.__name__})")
    with connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{SERVER}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
