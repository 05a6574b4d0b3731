"""Many workers, one study in a real PostgreSQL server (created and dropped per test)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

pytestmark = pytest.mark.postgres


def spec_file(tmp_path: Path, search: dict, epochs: int = 40) -> Path:
    raw = {
        "name": "dist",
        "seed": 0,
        "device": "cpu",
        "data": {"source": "sklearn:digits"},
        "model": {"hidden": [32]},
        "train": {"epochs": epochs, "early_stopping": None},
        "search": search,
    }
    path = tmp_path / "dist.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def hpsearch(*args, env=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpsearch", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # one thread per process: several share this machine's cores
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        **kwargs,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return err


def trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study, storage=url).trials


GRID_12 = {
    "strategy": "grid",
    "workers": 1,
    "space": {
        "train.lr": {"low": 1e-3, "high": 1e-2, "log": True, "steps": 4},
        "train.batch_size": {"choices": [32, 64, 128]},
    },
}


def test_three_workers_share_a_twelve_trial_grid(tmp_path, database):
    spec = spec_file(tmp_path, GRID_12)
    run = hpsearch(
        "run", spec, "--storage", database, "--study", "grid12", "--runs-dir", tmp_path / "a"
    )
    workers = [
        hpsearch(
            "worker", "--storage", database, "--study", "grid12", "--runs-dir", tmp_path / f"w{i}"
        )
        for i in range(3)
    ]
    finish(run)
    for worker in workers:
        finish(worker)
    done = trials(database, "grid12")
    assert len(done) == 12
    assert all(t.state.name == "COMPLETE" for t in done)
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == 12
    machines = {(t.user_attrs["worker_host"], t.user_attrs["worker_pid"]) for t in done}
    assert len(machines) >= 2  # the workers really took trials

    # the planner scored the selected model: its own, or the weights the study keeps
    from hpsearch.runs import read_json

    planner_run = next((tmp_path / "a").iterdir())
    best = read_json(planner_run / "summary.json")["best"]
    here = (planner_run / "trials" / str(best["trial"]) / "result.json").exists()
    assert best["weights"] == ("local" if here else "fetched"), best
    assert "test_error" in best["metrics"]

    # the database alone is enough for a report: trial outcomes, the best and its test error
    from hpsearch.report import study_folder

    summary = read_json(study_folder(database, "grid12", tmp_path / "elsewhere").summary)
    # ... and it needs no torch: a report of a large study does not wait for it to import
    code = (
        "import sys; from hpsearch.report import study_folder; "
        f"study_folder({database!r}, 'grid12', __import__('pathlib').Path({str(tmp_path)!r})); "
        "print('torch' in sys.modules)"
    )
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert imported.stdout.strip() == "False", imported.stderr
    assert summary["counts"]["complete"] == 12
    assert summary["state"] == "finished"
    assert summary["best"]["metrics"]["test_error"] is not None
    assert "password" not in json.dumps(summary)


def test_killed_worker_is_failed_by_heartbeat_and_retried(tmp_path, database):
    spec = spec_file(
        tmp_path,
        {**GRID_12, "space": {"train.lr": {"values": [1e-3, 2e-3, 3e-3, 4e-3]}}},
        epochs=150,
    )
    fast_heartbeat = {"HPSEARCH_HEARTBEAT_SECONDS": "1"}
    run = hpsearch(
        "run",
        spec,
        "--storage",
        database,
        "--study",
        "kill",
        "--runs-dir",
        tmp_path / "a",
        env=fast_heartbeat,
    )
    victim = hpsearch(
        "worker",
        "--storage",
        database,
        "--study",
        "kill",
        "--runs-dir",
        tmp_path / "v",
        env=fast_heartbeat,
    )

    def victim_trial():
        try:
            current = trials(database, "kill")
        except KeyError:
            return None
        running = [
            t
            for t in current
            if t.state.name == "RUNNING" and t.user_attrs.get("worker_pid") == victim.pid
        ]
        return running[0].number if running else None

    deadline = time.time() + 120
    while victim_trial() is None:
        assert time.time() < deadline, "the worker never started a trial"
        time.sleep(0.2)
    killed = victim_trial()
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    finish(run)
    done = trials(database, "kill")
    by_number = {t.number: t for t in done}
    assert by_number[killed].state.name == "FAIL"
    retried = [
        optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in done
    ]
    assert killed in retried
    assert not [t for t in done if t.state.name == "RUNNING"]
    assert sum(t.state.name == "COMPLETE" for t in done) == 4


def test_eight_processes_starting_at_once_create_one_study(tmp_path, database):
    search = {
        "strategy": "random",
        "trials": 16,
        "workers": 1,
        "space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
    }
    spec = spec_file(tmp_path, search, epochs=3)
    procs = [
        hpsearch(
            "run", spec, "--storage", database, "--study", "crowd", "--runs-dir", tmp_path / f"r{i}"
        )
        for i in range(8)
    ]
    for proc in procs:
        finish(proc)
    summaries = optuna.get_all_study_summaries(database)
    assert [s.study_name for s in summaries] == ["crowd"]
    done = trials(database, "crowd")
    assert len(done) == 16
    assert all(t.state.name == "COMPLETE" for t in done)


def test_a_password_in_the_query_string_is_masked_everywhere(tmp_path, database):
    """Trust authentication ignores the password, so the run works; it must appear nowhere."""
    secret = "query-s3cret"
    url = f"{database}?password={secret}&application_name=hpsearch"
    spec = spec_file(
        tmp_path, {"trials": 2, "workers": 1, "space": {"train.lr": {"choices": [0.01]}}}, epochs=2
    )
    runs = tmp_path / "runs"
    run = hpsearch("run", spec, "--storage", url, "--runs-dir", runs, "--json")
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert secret not in out + err
    for path in runs.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".yaml", ".log", ".jsonl"):
            assert secret not in path.read_text(errors="replace"), path
    study = optuna.load_study(study_name=json.loads(out)["study"], storage=database)
    assert secret not in json.dumps(study.user_attrs)


def test_a_two_objective_study_is_shared_through_the_database(tmp_path, database):
    spec = spec_file(
        tmp_path,
        {
            "strategy": "tpe",
            "trials": 8,
            "workers": 1,
            "space": {
                "train.lr": {"low": 1e-3, "high": 1e-1, "log": True},
                "model.hidden": {"choices": [[4], [16], [64]]},
            },
        },
        epochs=5,
    )
    raw = yaml.safe_load(spec.read_text())
    raw["objective"] = {"metrics": ["dev_error", "n_params"], "constraints": ["n_params <= 5000"]}
    spec.write_text(yaml.safe_dump(raw))
    run = hpsearch(
        "run", spec, "--storage", database, "--study", "mo", "--runs-dir", tmp_path / "a"
    )
    worker = hpsearch(
        "worker", "--storage", database, "--study", "mo", "--runs-dir", tmp_path / "w"
    )
    finish(run)
    finish(worker)
    done = trials(database, "mo")
    assert len(done) == 8 and all(len(t.values) == 2 for t in done)
    assert all("constraints:n_params <= 5000" in t.system_attrs for t in done)
    from hpsearch.runs import read_json

    summary = read_json(next((tmp_path / "a").iterdir()) / "summary.json")
    assert summary["pick"]["trial"] == summary["best"]["trial"]
    assert summary["best"]["metrics"]["n_params"] <= 5000
    assert summary["best"]["metrics"]["test_error"] is not None


def test_the_planner_refreshes_the_database_statistics_as_the_study_grows(
    tmp_path, database, monkeypatch
):
    """Where autovacuum is off (or behind), PostgreSQL plans Optuna's reads of a grown study
    from the statistics of an empty one and scans the whole study for each: the planner
    analyzes Optuna's tables itself as the study doubles in size."""
    import psycopg

    import hpsearch.search as search_module
    from hpsearch.engine import RunOptions, run_spec

    monkeypatch.setattr(search_module, "STATISTICS_FROM", 4)  # then 4, 8: twice in 10 trials
    spec = spec_file(
        tmp_path,
        {
            "trials": 10,
            "workers": 1,
            "stack": "off",  # one trial at a time: the planner looks after each
            "space": {"train.lr": {"low": 1e-3, "high": 1e-1}},
        },
        epochs=1,
    )
    run_spec(spec, RunOptions(runs_dir=tmp_path / "runs", storage=database, study="stats"))
    with psycopg.connect(database.replace("postgresql+psycopg", "postgresql")) as connection:
        analyzed = connection.execute(
            "SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'trials'"
        ).fetchone()[0]
    assert analyzed == 2
