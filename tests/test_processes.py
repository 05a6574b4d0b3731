"""Worker processes: forked from a server that imported torch once, in the planner's
environment of now."""

import os
import subprocess
import sys

import pytest

from hpsearch.processes import (
    PlannedDevice,
    adopt_environment,
    planned_device,
    prestart,
    start_method,
    wants_local_workers,
    worker_context,
)
from tests.conftest import make_spec


def _report(answers, environment):
    """A worker's first words: what it found imported, and a variable of the planner's."""
    preloaded = "torch" in sys.modules  # before this function imports anything
    adopt_environment(environment)
    answers.put((preloaded, os.environ.get("HPSEARCH_PROBE")))


@pytest.mark.skipif(start_method() != "forkserver", reason="no fork server on this platform")
def test_a_worker_starts_with_torch_imported_and_the_environment_of_now(monkeypatch):
    prestart()
    monkeypatch.setenv("HPSEARCH_PROBE", "set after the server started")
    context = worker_context()
    answers = context.Queue()
    process = context.Process(target=_report, args=(answers, dict(os.environ)))
    process.start()
    assert answers.get(timeout=120) == (True, "set after the server started")
    process.join(30)
    assert process.exitcode == 0


def test_the_server_is_prestarted_only_for_local_caviar_workers():
    def search(**fields):
        space = {"train.lr": {"low": 1e-3, "high": 1e-1}}
        return make_spec(search={"trials": 4, "space": space, **fields}).search

    assert wants_local_workers(search(), None, None, None)  # workers: auto
    assert wants_local_workers(search(), None, None, "local")  # --on's default
    assert wants_local_workers(search(workers=1), 2, None, None)  # --workers 2
    assert not wants_local_workers(search(workers=1), None, None, None)
    assert not wants_local_workers(search(mode="panda"), None, None, None)
    assert not wants_local_workers(search(), None, "panda", None)  # --mode panda
    assert not wants_local_workers(search(), None, None, "ray")  # Ray starts its own
    assert not wants_local_workers(None, None, None, None)  # one model, no search


def test_the_planner_starts_workers_without_importing_torch():
    """A search on the CPU dispatches its workers before the planner imports torch: the
    modules of its path import none, and the device is told from the installed build."""
    code = (
        "import sys; import hpsearch.engine, hpsearch.search, hpsearch.workers; "
        "from hpsearch.processes import planned_device; "
        "print(planned_device('cpu'), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["cpu", "False"]


def test_the_planned_device_is_torchs_where_torch_is_asked():
    torch = pytest.importorskip("torch")
    auto = planned_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert str(PlannedDevice("cuda", 1)) == str(torch.device("cuda:1"))
