"""MLflow tracking (hpsearch.tracking) over the run folder of a real small search, logged to a
SQLite store in tmp_path and read back with MlflowClient."""

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from hpsearch.engine import RunOptions, RunResult, run_spec
from hpsearch.errors import InputError
from hpsearch.outcome import TrialOutcome, TrialState
from hpsearch.runs import RunFolder, read_json, read_jsonl
from hpsearch.spec import load_spec, spec_from_dict
from hpsearch.storage import mask_url
from hpsearch.tracking import (
    FINAL_PREFIX,
    KIND_TAG,
    MlflowTracker,
    _batches,
    _key,
    _quiet_mlflow,
    _status,
    open_tracker,
    resolve_uri,
)

EPOCHS = 4
TRIALS = 3
# MLflow's SQLite store on SQLAlchemy 2.1 (theirs; Python's default filters hide it outside tests)
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@pytest.fixture(autouse=True)
def _mlflow_env(monkeypatch):
    """No telemetry, and no tracking URI from the environment."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> RunResult:
    """A real random search: 3 trials of 4 epochs on iris, in one process."""
    folder = tmp_path_factory.mktemp("search")
    raw = {
        "name": "tracked",
        "seed": 0,
        "device": "cpu",
        "data": {"source": "sklearn:iris"},
        "model": {"hidden": [8]},
        "train": {"epochs": EPOCHS, "lr": 0.01, "batch_size": 16},
        "search": {
            "trials": TRIALS,
            "workers": 1,
            "space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
        },
    }
    path = folder / "tracked.yaml"
    path.write_text(yaml.safe_dump(raw))
    return run_spec(path, RunOptions(runs_dir=folder / "runs"))


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty, migrated MLflow database: creating one takes seconds, copying it does not."""
    mlflow = pytest.importorskip("mlflow")
    db = tmp_path_factory.mktemp("mlflow") / "empty.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store(tmp_path, empty_store) -> str:
    """A fresh SQLite tracking URI in tmp_path (its artifacts go to tmp_path/store/mlartifacts)."""
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(empty_store, db)
    return f"sqlite:///{db}"


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    """An empty current directory, to check that nothing lands in it."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def outcomes(run: RunFolder) -> list[TrialOutcome]:
    return [TrialOutcome.from_json(read_json(run.trial(n).result)) for n in run.trial_numbers()]


def track_all(uri: str, result: RunResult) -> MlflowTracker:
    run = result.run
    tracker = MlflowTracker.open(uri, run, load_spec(run.spec), run.name)
    for outcome in outcomes(run):
        tracker.trial_finished(outcome)
    tracker.finish(result.summary)
    return tracker


def runs_by_name(uri: str) -> dict[str, object]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    found = client.search_runs([experiment.experiment_id])
    by_name = {r.info.run_name: r for r in found}
    assert len(by_name) == len(found), "run names repeat"
    return by_name


def test_each_trial_becomes_a_run_with_its_params_history_metrics_and_files(searched, store, cwd):
    from mlflow import MlflowClient

    track_all(store, searched)
    client = MlflowClient(tracking_uri=store)
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert [e.name for e in experiments] == [searched.run.name]
    runs = runs_by_name(store)
    assert sorted(runs) == ["search"] + [f"trial-{n}" for n in range(TRIALS)]
    search_id = runs["search"].info.run_id

    for outcome in outcomes(searched.run):
        folder = searched.run.trial(outcome.number)
        logged = runs[f"trial-{outcome.number}"]
        run_id = logged.info.run_id
        assert logged.info.status == "FINISHED"
        assert logged.data.tags[KIND_TAG] == "trial"
        assert logged.data.tags["mlflow.parentRunId"] == search_id
        assert logged.data.tags["hpsearch.state"] == "complete"
        assert logged.data.params == {
            "train.lr": json.dumps(outcome.params["train.lr"]),
            "seed": str(outcome.seed),
        }
        epochs = read_jsonl(folder.metrics)
        assert outcome.epochs_run == len(epochs) == EPOCHS
        history = client.get_metric_history(run_id, "dev_loss")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
        assert {m.step: m.value for m in history} == {e["epoch"]: e["dev_loss"] for e in epochs}
        result = read_json(folder.result)
        final = {
            k.removeprefix(FINAL_PREFIX): v
            for k, v in logged.data.metrics.items()
            if k.startswith(FINAL_PREFIX)
        }
        assert final == pytest.approx(result["metrics"]) and final
        assert logged.data.metrics["objective"] == pytest.approx(result["value"])
        assert "epoch" not in logged.data.metrics
        names = sorted(a.path for a in client.list_artifacts(run_id))
        files = sorted(p.name for p in folder.root.iterdir() if not p.name.startswith("."))
        assert names == files and {"metrics.jsonl", "model.pt", "result.json"} <= set(names)
        copy = Path(client.download_artifacts(run_id, "model.pt", str(cwd.parent)))
        assert copy.read_bytes() == folder.model.read_bytes()
        copy.unlink()

    search = runs["search"]
    best = searched.summary["best"]
    assert search.info.status == "FINISHED"
    assert search.data.tags["hpsearch.best_trial"] == str(best["trial"])
    assert search.data.metrics["best/test_error"] == pytest.approx(best["metrics"]["test_error"])
    assert search.data.metrics["trials/complete"] == TRIALS
    assert runs[f"trial-{best['trial']}"].data.tags.get("hpsearch.best") == "true"
    artifacts = {a.path for a in client.list_artifacts(search_id)}
    assert {"summary.json", "spec.yaml"} <= artifacts
    summary = json.loads(Path(client.download_artifacts(search_id, "summary.json")).read_text())
    assert summary["best"]["trial"] == best["trial"]
    assert list(cwd.iterdir()) == []  # store and artifacts went where the URI said


def test_a_resumed_search_logs_each_trial_once(searched, store):
    run, spec = searched.run, load_spec(searched.run.spec)
    first, *rest = outcomes(run)
    MlflowTracker.open(store, run, spec, run.name).trial_finished(first)
    track_all(store, searched)  # reopened: the whole search again
    runs = runs_by_name(store)
    assert sorted(runs) == ["search"] + [f"trial-{n}" for n in range(TRIALS)]
    assert runs["search"].info.status == "FINISHED"


def test_failed_trials_rescue_events_and_long_histories(searched, store, tmp_path):
    from mlflow import MlflowClient

    run = RunFolder(tmp_path / "copy" / searched.run.name)
    shutil.copytree(searched.run.root, run.root)
    failed = run.trial(0)
    with failed.metrics.open("a") as handle:
        rescue = {"epoch": 3, "event": "rescue", "reason": "diverged", "lr": 0.001}
        handle.write(json.dumps(rescue) + "\n")
        handle.write('{"epoch": 5, "dev_lo')  # a write cut short
    long = run.trial(1)
    records = [{"epoch": e, **{f"m{k}": e * 0.5 + k for k in range(14)}} for e in range(1, 101)]
    long.metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    trials = outcomes(run)
    trials[0].state, trials[0].reason = TrialState.FAILED, "diverged"

    tracker = MlflowTracker.open(store, run, load_spec(run.spec), run.name)
    for outcome in trials[:2]:
        tracker.trial_finished(outcome)
    assert tracker.active
    runs = runs_by_name(store)
    client = MlflowClient(tracking_uri=store)

    logged = runs["trial-0"]
    assert logged.info.status == "FAILED"
    assert logged.data.tags["hpsearch.reason"] == "diverged"
    assert json.loads(logged.data.tags["hpsearch.events"])[0]["event"] == "rescue"
    assert not {"event", "reason"} & set(logged.data.metrics)
    for name in ("dev_loss", "lr"):
        assert len(client.get_metric_history(logged.info.run_id, name)) == EPOCHS

    history = client.get_metric_history(runs["trial-1"].info.run_id, "m13")  # 1400 values
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 101))
    assert history[-1].value == pytest.approx(records[history[-1].step - 1]["m13"])


def test_an_unwritable_store_warns_once_and_the_search_goes_on(searched, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run = searched.run
    tracker = MlflowTracker.open(f"sqlite:///{blocker}/mlflow.db", run, load_spec(run.spec), "x")
    for outcome in outcomes(run):
        tracker.trial_finished(outcome)
    tracker.finish(searched.summary)
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if "mlflow" in line] == lines
    assert len(lines) == 1 and lines[0].startswith("warning: mlflow: cannot open")
    assert not tracker.active


def test_a_logging_failure_mid_search_warns_once_and_stops_tracking(searched, store, capsys):
    run = searched.run
    tracker = MlflowTracker.open(store, run, load_spec(run.spec), run.name)
    calls = []

    def broken(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("database is locked\nsecond line")

    tracker._client.log_batch = broken
    for outcome in outcomes(run):
        tracker.trial_finished(outcome)  # must not raise
    tracker.finish(searched.summary)
    err = capsys.readouterr().err
    assert err.count("warning: mlflow:") == 1 and len(err.splitlines()) == 1
    assert "cannot log trial 0" in err and "database is locked" in err
    assert len(calls) == 1 and not tracker.active


def test_without_mlflow_installed_the_spec_is_an_input_error(searched, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails
    spec = load_spec(searched.run.spec).model_copy(update={"tracking": None})
    assert open_tracker(spec, searched.run, "x") is None  # no tracking: MLflow not needed
    tracked = spec_from_dict({**spec.model_dump(mode="json"), "tracking": {"mlflow": None}})
    with pytest.raises(InputError, match=r"pip install 'hpsearch\[mlflow\]'"):
        open_tracker(tracked, searched.run, "x")
    with pytest.raises(InputError, match="^tracking.mlflow: MLflow is not installed"):
        MlflowTracker.open(f"sqlite:///{tmp_path}/m.db", searched.run, spec, "x")


def test_the_spec_takes_a_tracking_section(write_spec):
    base = "name: t\ndata: {source: 'sklearn:iris'}\n"
    assert load_spec(write_spec(base)).tracking is None
    spec = load_spec(write_spec(base + "tracking: {mlflow: 'sqlite:///m.db'}\n"))
    assert spec.tracking.mlflow == "sqlite:///m.db"
    assert load_spec(write_spec(base + "tracking: {mlflow: null}\n")).tracking.mlflow is None
    with pytest.raises(InputError, match="mlfow"):
        load_spec(write_spec(base + "tracking: {mlfow: 'sqlite:///m.db'}\n"))


def test_the_default_store_is_mlflows_own(cwd, monkeypatch):
    assert resolve_uri(None) == f"sqlite:///{cwd}/mlflow.db"
    assert resolve_uri("") == resolve_uri(None)
    assert resolve_uri("sqlite:///sub/t.db?timeout=5") == f"sqlite:///{cwd}/sub/t.db?timeout=5"
    assert resolve_uri("sqlite:////abs/t.db") == "sqlite:////abs/t.db"
    assert resolve_uri("http://host:5000") == "http://host:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_uri(None) == "http://tracking:5000"
    assert mask_url("https://me:secret@host/x") == "https://me:***@host/x"
    assert mask_url("sqlite:////a/b@c.db") == "sqlite:////a/b@c.db"


def test_names_and_batches_stay_within_mlflows_limits():
    assert _key("dev_error[hard]: x") == "dev_error_hard__ x"
    assert _key("train.lr") == "train.lr"
    metrics, params = list(range(2500)), [f"p{i}" for i in range(150)]
    batches = list(_batches(metrics, params, ["t"]))
    for batch in batches:
        assert len(batch["params"]) <= 100 and len(batch["tags"]) <= 100
        assert sum(len(v) for v in batch.values()) <= 1000
    assert [m for b in batches for m in b["metrics"]] == metrics
    assert [p for b in batches for p in b["params"]] == params
    assert len(batches) == 3


def test_opening_keeps_mlflows_info_lines_off_the_terminal():
    """Creating a store logs 'Creating initial MLflow database tables...' and alembic's steps
    at INFO; the levels are raised only while the store opens."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    before = [logger.level for logger in loggers]
    with _quiet_mlflow():
        assert not any(logger.isEnabledFor(logging.INFO) for logger in loggers)
        assert all(logger.isEnabledFor(logging.WARNING) for logger in loggers)
    assert [logger.level for logger in loggers] == before


@pytest.mark.parametrize(
    ("state", "reason", "status"),
    [
        ("complete", None, "FINISHED"),
        ("pruned", "pruned", "KILLED"),
        ("failed", "interrupted", "KILLED"),
        ("failed", "diverged", "FAILED"),
        ("failed", "error: boom", "FAILED"),
    ],
)
def test_trial_states_map_to_mlflow_statuses(state, reason, status):
    assert _status(TrialOutcome(0, state, reason, {}, 0)) == status


def test_run_with_mlflow_logs_every_trial_from_the_worker_processes(tmp_path, store):
    """Through the CLI, caviar with two worker processes: each trial lands in MLflow once (the
    planner logs what its workers finished), with the search run beside them."""
    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from hpsearch.cli import app

    raw = {
        "name": "cli-tracked",
        "device": "cpu",
        "data": {"source": "sklearn:iris"},
        "model": {"hidden": [8]},
        "train": {"epochs": 3},
        "search": {"trials": 4, "workers": 2, "space": {"train.lr": {"choices": [0.01, 0.1]}}},
    }
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    args = ["run", str(spec), "--runs-dir", str(tmp_path / "runs"), "--mlflow", store, "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "logging to MLflow" in result.stderr
    (run,) = (tmp_path / "runs").iterdir()
    client = MlflowClient(tracking_uri=store)
    (experiment,) = [e for e in client.search_experiments() if e.name == run.name]
    runs = client.search_runs([experiment.experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert names == ["search", "trial-0", "trial-1", "trial-2", "trial-3"]
    assert yaml.safe_load((run / "spec.yaml").read_text())["tracking"] == {"mlflow": store}


def test_a_tracking_password_never_reaches_the_run_folder():
    from hpsearch.storage import masked

    spec = spec_from_dict(
        {
            "name": "t",
            "data": {"source": "sklearn:iris"},
            "tracking": {"mlflow": "https://me:secret@mlflow.example/"},
        }
    )
    assert masked(spec).tracking.mlflow == "https://me:***@mlflow.example/"
    assert spec.tracking.mlflow == "https://me:secret@mlflow.example/"  # only the copy
