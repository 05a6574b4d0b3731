import optuna
import pytest
import yaml

from hpsearch.engine import RunOptions, run_spec
from hpsearch.errors import InputError
from hpsearch.storage import check_storage_url, mask_args, mask_url, probe_storage


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://bob:s3cret@db.example:5432/hp", "postgresql://bob:***@db.example:5432/hp"),
        ("mysql+pymysql://root:pw@127.0.0.1/t", "mysql+pymysql://root:***@127.0.0.1/t"),
        ("sqlite:///study.db", "sqlite:///study.db"),
        ("garbage://user:pw@", "garbage://user:***@"),
        # credentials in the query string, wherever they stand
        (
            "postgresql+psycopg://postgres@h:5432/db?password=hunter2",
            "postgresql+psycopg://postgres@h:5432/db?password=***",
        ),
        (
            "postgresql://u@h/db?sslmode=require&sslpassword=s3cr3t",
            "postgresql://u@h/db?sslmode=require&sslpassword=***",
        ),
        (
            "postgresql://u:pw@h/db?PASSWORD=x&application_name=hp",
            "postgresql://u:***@h/db?PASSWORD=***&application_name=hp",
        ),
        (
            "mysql+pymysql://u@h/db?charset=utf8&passwd=x",
            "mysql+pymysql://u@h/db?charset=utf8&passwd=***",
        ),
        ("https://mlflow.example/?token=abc&x=1", "https://mlflow.example/?token=***&x=1"),
        ("sqlite:////a/b@c.db", "sqlite:////a/b@c.db"),
    ],
)
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_mask_args_only_touches_urls():
    args = ["hpsearch", "run", "--storage", "postgresql://u:pw@h/d", "x.yaml"]
    assert mask_args(args) == ["hpsearch", "run", "--storage", "postgresql://u:***@h/d", "x.yaml"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [("not a url", "not a database URL"), ("redis://u:pw@h", "unsupported database")],
)
def test_bad_urls(url, expected):
    with pytest.raises(InputError, match=expected) as info:
        check_storage_url(url)
    assert "pw" not in str(info.value)


def test_unreachable_database_message_has_no_password(tmp_path):
    url = f"sqlite:///{tmp_path}/no/such/dir/study.db"
    with pytest.raises(InputError, match="cannot connect"):
        probe_storage(url)


def test_search_in_sqlite_database(tmp_path):
    db = tmp_path / "study.db"
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "name": "sq",
                "device": "cpu",
                "data": {"source": "sklearn:iris"},
                "model": {"hidden": [8]},
                "train": {"epochs": 2},
                "search": {
                    "trials": 3,
                    "workers": 1,
                    "space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
                },
            }
        )
    )
    result = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs", storage=f"sqlite:///{db}"))
    assert not (result.run.root / "study.log").exists()
    study = optuna.load_study(study_name=result.run.name, storage=f"sqlite:///{db}")
    assert len(study.trials) == 3
    assert result.summary["study"] == result.run.name
