"""`hpsearch run SPEC --on ray...`: caviar workers as Ray tasks on a real local Ray head
(`ray start --head`), sharing the run's journal or a PostgreSQL study."""

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from packaging.version import Version

from tests.test_distributed import GRID_12, spec_file, trials

pytestmark = pytest.mark.ray

RAY = Path(sys.executable).parent / "ray"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Head:
    address: str
    temp_dir: Path  # Ray's session folders: logs named by each worker process's pid
    auth: dict[str, str]  # what a client needs in its environment to be let in

    def ran_in_worker(self, pid: int) -> bool:
        return any(self.temp_dir.glob(f"session_*/logs/python-core-worker-*_{pid}.log"))


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head of two CPUs on loopback for this module, ended with it; skipped without
    Ray unless CI requires it."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("HPSEARCH_REQUIRE_RAY"):
            pytest.fail("Ray is required here but not installed (pip install -e '.[ray]')")
        pytest.skip("Ray is not installed (pip install -e '.[ray]')")
    port = free_port()
    scratch = tmp_path_factory.mktemp("ray")
    log = scratch / "head.log"
    # Token authentication, said outright: a Ray that finds ~/.ray/auth_token (any earlier local
    # ray.init() writes one) turns it on by itself, and then clients must ask for it
    token = scratch / "auth_token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    with log.open("w") as out:
        # --block: the head's processes live as long as this one, so the fixture ends them
        process = subprocess.Popen(
            [
                str(RAY), "start", "--head", "--block", f"--port={port}",
                "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0",
                "--include-dashboard=false", "--disable-usage-stats",
                f"--temp-dir={scratch / 'tmp'}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **auth},
        )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 60
    while "Ray runtime started" not in log.read_text():
        assert process.poll() is None and time.time() < deadline, log.read_text()
        time.sleep(0.25)
    yield Head(address, scratch / "tmp", auth)
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def environment(**extra: str) -> dict[str, str]:
    """One thread per process; the address each test names, not one a shell exported."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def hpsearch(*args, cwd: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpsearch", *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **{"env": environment(), **popen},
    )


def finished(proc: subprocess.Popen, code: int = 0, timeout: float = 300) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == code, err
    return err


def summary_of(runs: Path) -> dict:
    (path,) = runs.glob("*/summary.json")
    return json.loads(path.read_text())


def journal_trials(runs: Path) -> list[optuna.trial.FrozenTrial]:
    (log,) = runs.glob("*/study.log")
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(log)))
    (study,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=study.study_name, storage=storage).trials


def dev_errors(summary: dict) -> dict[int, float]:
    return {t["number"]: t["metrics"]["dev_error"] for t in summary["trials"]}


def test_ray_tasks_train_the_same_trials_as_local_workers(head, tmp_path):
    spec = spec_file(tmp_path, {**GRID_12, "workers": "auto"}, epochs=20)
    run = hpsearch(
        "run", spec, "--on", f"ray:{head.address}", "--runs-dir", "ray", cwd=tmp_path,
        env=environment(**head.auth),
    )  # fmt: skip
    err = finished(run)
    # Ray names the head by the address it listens on, which may not be loopback's name
    port = head.address.rsplit(":", 1)[1]
    assert re.search(rf"workers on Ray at \S+:{port}: 1 node, 2 CPUs, 0 GPUs", err), err
    on_ray = summary_of(tmp_path / "ray")
    assert on_ray["state"] == "finished" and len(on_ray["trials"]) == 12
    # the tasks ran in Ray's worker processes, two of them, never in the planner
    pids = {t.user_attrs["worker_pid"] for t in journal_trials(tmp_path / "ray")}
    assert len(pids) == 2 and run.pid not in pids
    assert all(head.ran_in_worker(pid) for pid in pids), pids
    local = hpsearch("run", spec, "--runs-dir", "local", cwd=tmp_path)
    finished(local)
    # same configurations, same seeds, same arithmetic: the same models
    assert dev_errors(on_ray) == dev_errors(summary_of(tmp_path / "local"))


@pytest.mark.postgres
def test_ray_tasks_share_a_database_study(head, database, tmp_path):
    spec = spec_file(tmp_path, {**GRID_12, "workers": "auto"}, epochs=20)
    run = hpsearch(
        "run", spec, "--on", f"ray:{head.address}", "--storage", database, "--study", "onray",
        "--runs-dir", "runs", cwd=tmp_path, env=environment(**head.auth),
    )  # fmt: skip
    finished(run)
    found = trials(database, "onray")
    assert [t.state for t in found].count(optuna.trial.TrialState.COMPLETE) == 12 == len(found)
    assert len({json.dumps(t.params, sort_keys=True) for t in found}) == 12
    assert len({t.user_attrs["worker_pid"] for t in found}) == 2


def test_ctrl_c_stops_ray_tasks_and_resume_continues_from_checkpoints(head, tmp_path):
    search = {"strategy": "grid", "space": {"train.lr": {"choices": [0.01, 0.02, 0.03, 0.04]}}}
    spec = spec_file(tmp_path, search, epochs=300)
    run = hpsearch(
        "run", spec, "--on", f"ray:{head.address}", "--runs-dir", "runs", cwd=tmp_path,
        env=environment(HPSEARCH_CHECKPOINT_SECONDS="0.5", **head.auth),
    )  # fmt: skip
    deadline = time.time() + 120
    while not list((tmp_path / "runs").glob("*/trials/*/checkpoint.pt")):
        assert time.time() < deadline and run.poll() is None, run.communicate()[1]
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    err = finished(run, code=130, timeout=60)
    assert "resume with:" in err
    stopped = summary_of(tmp_path / "runs")
    cut = [t for t in stopped["trials"] if t.get("reason") == "interrupted"]
    assert stopped["state"] == "interrupted" and cut
    states = {t.state for t in journal_trials(tmp_path / "runs")}
    assert optuna.trial.TrialState.RUNNING not in states

    (folder,) = (tmp_path / "runs").iterdir()
    resume = hpsearch(
        "run", spec, "--on", f"ray:{head.address}", "--resume", folder, "--runs-dir", "runs",
        cwd=tmp_path, env=environment(**head.auth),
    )  # fmt: skip
    finished(resume)
    summary = summary_of(tmp_path / "runs")
    retries = [t for t in summary["trials"] if t.get("resumed_from") is not None]
    assert retries and all(t["resumed_epoch"] > 0 for t in retries)
    assert {t["resumed_from"] for t in retries} <= {t["number"] for t in cut}


# --- refusals (exit 2, before any run folder) -------------------------------------------------


def refused(tmp_path: Path, *args: str, said: str, env: dict | None = None) -> None:
    spec = spec_file(tmp_path, GRID_12, epochs=5)
    done = subprocess.run(
        [sys.executable, "-m", "hpsearch", "run", str(spec), "--runs-dir", "runs", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_an_unknown_on_is_refused(tmp_path):
    refused(tmp_path, "--on", "mars", said="--on: 'mars' is not one of local, ray")


def test_a_ray_address_nobody_answers_at_is_refused(tmp_path):
    pytest.importorskip("ray")
    port = free_port()  # bound a moment ago and released: nothing listens there
    refused(tmp_path, "--on", f"ray:127.0.0.1:{port}", said="no Ray cluster answers at")


def test_panda_is_refused_on_ray(tmp_path):
    pytest.importorskip("ray")
    said = "a panda search or a single model trains here"
    refused(tmp_path, "--on", "ray:auto", "--mode", "panda", said=said)


def test_without_ray_installed_the_error_says_how_to_install_it(tmp_path):
    # a Python that cannot import ray: a sitecustomize that blocks it
    blocker = tmp_path / "noray"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    env = {"PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    refused(tmp_path, "--on", "ray", said="pip install 'hpsearch[ray]'", env=env)


def test_a_client_without_the_clusters_token_mode_is_told_how_to_ask(head, tmp_path):
    import ray

    if Version(ray.__version__) < Version("2.52"):
        pytest.skip("Ray before 2.52 has no token authentication")
    # the head wants a token; a client that has not set RAY_AUTH_MODE sends none
    plain = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    spec = spec_file(tmp_path, GRID_12, epochs=5)
    done = subprocess.run(
        [sys.executable, "-m", "hpsearch", "run", str(spec), "--on", f"ray:{head.address}",
         "--runs-dir", "runs"],
        cwd=tmp_path, capture_output=True, text=True, env=plain, timeout=180,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "set RAY_AUTH_MODE=token" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()
