"""A database that goes away mid-run: a real PostgreSQL restart, connections cut by a proxy,
and a database that stays away past the retry limit (then --resume)."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
from sqlalchemy.engine import make_url

from tests.test_distributed import hpsearch, spec_file, trials

pytestmark = pytest.mark.postgres
EPOCHS = 15  # about a second a trial: the faults below land while trials remain

SEARCH = {
    "strategy": "random",
    "trials": 6,
    "workers": 2,
    "space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
}


class Proxy:
    """A TCP proxy 127.0.0.1:port -> the database server, which can cut every live connection
    (`cut`) or stop answering altogether (`down`, then `up`)."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.accepted = 0
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.port = 0
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and drop the live ones: the database is gone."""
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()
        self.cut()

    def cut(self) -> None:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for end in pair:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.pairs.append((client, server))
                self.accepted += 1
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxied(database):
    """(the database's URL through a proxy, the proxy)."""
    url = make_url(database)
    proxy = Proxy((url.host, url.port or 5432))
    yield url.set(host="127.0.0.1", port=proxy.port).render_as_string(False), proxy
    proxy.down()


def wait_for_complete(url: str, study: str, count: int, proc: subprocess.Popen) -> None:
    """Until `count` trials of `study` are complete and one more is running (asked of the
    database directly: Optuna's storage costs the run's cores more)."""
    psycopg = pytest.importorskip("psycopg")
    plain = make_url(url).set(drivername="postgresql").render_as_string(False)
    query = (
        "SELECT t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
        "WHERE s.study_name = %s"
    )
    deadline = time.time() + 120
    with psycopg.connect(plain, autocommit=True) as connection:
        while time.time() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                states = [row[0] for row in connection.execute(query, (study,))]
            except psycopg.errors.UndefinedTable:  # Optuna's tables are not made yet
                states = []
            if states.count("COMPLETE") >= count and "RUNNING" in states:
                return
            time.sleep(0.3)
    raise AssertionError("the run never got going")


def check_promises(url: str, study: str, runs: Path, budget: int) -> None:
    """The budget exact, no trial left running, every complete trial in the summary."""
    from hpsearch.study import failure_reason

    done = trials(url, study)
    assert not [t.number for t in done if t.state.name == "RUNNING"], [
        (t.number, t.datetime_start, t.datetime_complete, t.user_attrs.get("worker_pid"))
        for t in done
    ]
    retried = {t.user_attrs["retry_of"] for t in done if "retry_of" in t.user_attrs}
    counted = [t for t in done if t.state.name != "WAITING" and t.number not in retried]
    assert len(counted) == budget, [
        (t.number, t.state.name, t.user_attrs.get("retry_of"), failure_reason(t)) for t in done
    ]
    complete = {t.number for t in done if t.state.name == "COMPLETE"}
    summary = json.loads(next(runs.glob("*/summary.json")).read_text())
    assert summary["state"] == "finished"
    listed = {t["number"] for t in summary["trials"] if t["state"] == "complete"}
    assert listed == complete
    assert summary["counts"]["complete"] == len(complete)


def run(spec: Path, url: str, study: str, runs: Path, env: dict | None = None):
    return hpsearch(
        "run", spec, "--storage", url, "--study", study, "--runs-dir", runs, "-q", env=env
    )


def local_cluster() -> tuple[str, str]:
    """(version, name) of the local PostgreSQL cluster on port 5432, or skip saying why."""
    if os.geteuid() != 0:
        pytest.skip("restarting PostgreSQL needs root (pg_ctlcluster)")
    if shutil.which("pg_lsclusters") is None or shutil.which("pg_ctlcluster") is None:
        pytest.skip("no pg_lsclusters / pg_ctlcluster here (Debian's postgresql-common)")
    listed = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True)
    for line in listed.stdout.splitlines():
        version, name, port, status, *_ = line.split()
        if port == "5432" and status == "online":
            return version, name
    pytest.skip("no online local PostgreSQL cluster on port 5432 to restart")


def test_a_postgresql_restart_mid_run_costs_only_a_wait(tmp_path, database):
    if make_url(database).host not in ("127.0.0.1", "localhost"):
        pytest.skip("the test server is not local: it cannot be restarted from here")
    version, name = local_cluster()
    spec = spec_file(tmp_path, SEARCH, epochs=EPOCHS)
    runs = tmp_path / "runs"
    proc = run(spec, database, "restart", runs)
    wait_for_complete(database, "restart", 1, proc)
    started = time.time()
    subprocess.run(["pg_ctlcluster", version, name, "restart"], check=True, timeout=60)
    restart = time.time() - started
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert "database unreachable at 127.0.0.1:5432, retrying" in err, err
    assert "database at 127.0.0.1:5432 is back" in err
    check_promises(database, "restart", runs, 6)
    print(f"restart took {restart:.1f} s")


def test_connections_cut_mid_trial_are_reopened(tmp_path, proxied):
    url, proxy = proxied
    spec = spec_file(tmp_path, SEARCH, epochs=EPOCHS)
    runs = tmp_path / "runs"
    proc = run(spec, url, "cut", runs)
    wait_for_complete(url, "cut", 1, proc)
    before = proxy.accepted
    for _ in range(6):  # every process loses every connection, several times over
        proxy.cut()
        time.sleep(0.3)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert proxy.accepted > before  # the cuts were felt: connections were opened again
    check_promises(url, "cut", runs, 6)


def test_a_database_away_past_the_limit_stops_the_run_and_a_resume_finishes_it(tmp_path, proxied):
    url, proxy = proxied
    spec = spec_file(tmp_path, SEARCH, epochs=EPOCHS)
    runs = tmp_path / "runs"
    env = {"HPSEARCH_DB_RETRY_SECONDS": "3", "HPSEARCH_HEARTBEAT_SECONDS": "1"}
    proc = run(spec, url, "away", runs, env=env)
    wait_for_complete(url, "away", 1, proc)
    proxy.down()
    started = time.time()
    out, err = proc.communicate(timeout=120)
    stopped = time.time() - started
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert f"database unreachable at 127.0.0.1:{proxy.port} for " in errors[0]
    assert "--resume" in errors[0]
    assert stopped < 30, stopped  # the limit (3 s), plus stopping the workers
    proxy.up()
    # The resume continues the same study (even when the stop came before the first summary),
    # tells what finished but was never told, and retries what was cut short.
    folder = next(runs.iterdir())
    resumed = hpsearch(
        "run",
        spec,
        "--storage",
        url,
        "--resume",
        folder,
        "-q",
        env={"HPSEARCH_HEARTBEAT_SECONDS": "1"},
    )
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    check_promises(url, "away", runs, 6)


def test_a_worker_waiting_for_a_study_says_so(database, capsys):
    from hpsearch.errors import InputError
    from hpsearch.study import load_existing_study, open_storage

    with pytest.raises(InputError, match="no study 'later'"):
        load_existing_study(open_storage(database, Path(os.devnull)), "later", wait=4.5)
    err = capsys.readouterr().err
    waiting = [line for line in err.splitlines() if line.startswith("waiting for study later at")]
    assert len(waiting) >= 2, err  # every few seconds, not once
    assert f"at {make_url(database).host}:{make_url(database).port or 5432}… " in waiting[0]


def test_only_connection_errors_are_retried():
    from sqlalchemy.exc import IntegrityError, OperationalError

    from hpsearch.storage import is_connection_error

    dropped = OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = dropped
    assert is_connection_error(dropped) and is_connection_error(wrapped)
    assert not is_connection_error(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_connection_error(KeyError("study"))


def test_the_retry_waits_says_so_and_gives_up_at_the_limit(monkeypatch, capsys):
    from sqlalchemy.exc import OperationalError

    from hpsearch.storage import DatabaseUnreachable, retrying

    monkeypatch.setenv("HPSEARCH_DB_RETRY_SECONDS", "1")
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        return "answer"

    assert retrying(flaky, "db:5432") == "answer"
    err = capsys.readouterr().err
    assert err.count("database unreachable at db:5432, retrying… 0 s") == 1  # not every try
    assert "database at db:5432 is back after" in err

    def down() -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    started = time.monotonic()
    with pytest.raises(DatabaseUnreachable, match="unreachable at db:5432 for 1 s"):
        retrying(down, "db:5432")
    assert 1.0 <= time.monotonic() - started < 3.0
