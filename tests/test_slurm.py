"""examples/slurm-array.sh submitted to a real Slurm (a one-node cluster on this machine, see
tests/slurm/start.sh): the array's tasks share one PostgreSQL study, and a cancelled task's
trial continues from its checkpoint in the next task."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.test_distributed import GRID_12, spec_file, trials

pytestmark = [pytest.mark.postgres, pytest.mark.slurm]

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "slurm-array.sh"


def slurm_answers() -> str | None:
    """Why Slurm cannot be used here, or None when a controller answers with an idle node."""
    if shutil.which("sbatch") is None:
        return "sbatch not found (apt-get install slurm-wlm; bash tests/slurm/start.sh)"
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 10 s"
    if states.returncode != 0:
        return f"no Slurm controller answers ({states.stderr.strip() or states.returncode})"
    if not re.search(r"^(idle|mixed|allocated)", states.stdout, re.MULTILINE):
        return f"no Slurm node is up (sinfo: {states.stdout.strip()})"
    return None


@pytest.fixture(scope="module")
def slurm():
    """Skipped (saying why) without a running Slurm, unless CI requires it."""
    reason = slurm_answers()
    if reason is not None:
        if os.environ.get("HPSEARCH_REQUIRE_SLURM"):
            pytest.fail(f"Slurm is required here but not usable: {reason}")
        pytest.skip(reason)


def submit(folder: Path, url: str, study: str, spec: Path, array: str, **env: str) -> str:
    """sbatch the example script as written, as a user would: one CPU per task on this small
    node (the script asks for 4), logs in `folder`. Returns the job id."""
    environment = {
        **os.environ,
        # the job runs this checkout's hpsearch, whatever the submitting shell's PATH says
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HPSEARCH_STORAGE": url,
        "HPSEARCH_STUDY": study,
        "OMP_NUM_THREADS": "1",
        **env,
    }
    done = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--array={array}",
            "--cpus-per-task=1",
            "--time=00:10:00",
            f"--chdir={folder}",
            f"--output={folder}/task-%a.log",
            str(SCRIPT),
            str(spec),
        ],
        capture_output=True,
        text=True,
        env=environment,
        check=True,
    )
    return done.stdout.strip().split(";")[0]


def queued(job: str) -> list[str]:
    """The job's array tasks still pending or running."""
    out = subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%i %T"], capture_output=True, text=True
    ).stdout
    return [line for line in out.splitlines() if line.strip()]


def wait_for(job: str, folder: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while queued(job):
        if time.time() > deadline:
            subprocess.run(["scancel", job])
            pytest.fail(f"job {job} still queued after {timeout} s:\n{logs(folder)}")
        time.sleep(1)


def logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(folder.glob("task-*.log")))


def exit_codes(job: str) -> dict[str, str]:
    """Each finished array task's state and exit code, as the controller remembers them."""
    out = subprocess.run(
        ["scontrol", "-o", "show", "job", job], capture_output=True, text=True, check=True
    ).stdout
    codes = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S+)", line))
        codes[fields.get("ArrayTaskId", "?")] = f"{fields['JobState']} {fields['ExitCode']}"
    return codes


def planner_summary(folder: Path) -> dict:
    """The summary of the task that created the study (its run folder is named after the spec;
    a task that joined writes into a folder named after the study)."""
    summaries = [json.loads(path.read_text()) for path in folder.glob("runs/*/dist-*/summary.json")]
    assert len(summaries) == 1, [str(p) for p in folder.glob("runs/*/*/summary.json")]
    return summaries[0]


def test_an_array_shares_one_study_exactly(slurm, database, tmp_path):
    study = "array"
    spec = spec_file(tmp_path, GRID_12, epochs=30)
    job = submit(tmp_path, database, study, spec, "0-2")
    wait_for(job, tmp_path)
    assert set(exit_codes(job).values()) == {"COMPLETED 0:0"}, logs(tmp_path)

    found = trials(database, study)
    complete = [t for t in found if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 12 and len(found) == 12, logs(tmp_path)  # the budget, exactly
    points = {json.dumps(t.params, sort_keys=True) for t in complete}
    assert len(points) == 12  # every grid point once, none repeated across tasks
    assert len({t.user_attrs["worker_pid"] for t in complete}) >= 2  # tasks really shared it
    summary = planner_summary(tmp_path)
    assert summary["state"] == "finished"
    assert sorted(t["number"] for t in summary["trials"]) == sorted(t.number for t in complete)


def test_a_cancelled_task_leaves_nothing_running_and_the_next_task_continues_it(
    slurm, database, tmp_path
):
    study = "cancel"
    search = {"strategy": "grid", "space": {"train.lr": {"choices": [0.01, 0.02]}}}
    spec = spec_file(tmp_path, search, epochs=400)
    first = submit(tmp_path, database, study, spec, "0", HPSEARCH_CHECKPOINT_SECONDS="0.5")
    deadline = time.time() + 120
    while not list(tmp_path.glob("runs/0/*/trials/*/checkpoint.pt")):
        assert time.time() < deadline and queued(first), logs(tmp_path)
        time.sleep(0.2)
    subprocess.run(["scancel", first], check=True)  # SIGTERM, then SIGKILL after KillWait
    wait_for(first, tmp_path)

    found = trials(database, study)
    states = [t.state for t in found]
    assert optuna.trial.TrialState.RUNNING not in states, logs(tmp_path)
    cut = [t for t in found if t.state == optuna.trial.TrialState.FAIL]
    assert len(cut) == 1 and cut[0].user_attrs["outcome"]["reason"].startswith("interrupted")
    waiting = [t for t in found if t.state == optuna.trial.TrialState.WAITING]
    retries = [t for t in waiting if "retry_of" in t.user_attrs]  # the other: the grid's next
    # queued again at once, for whichever task asks next, with its checkpoint's folder
    assert [t.user_attrs["retry_of"] for t in retries] == [cut[0].number]
    checkpoint = Path(retries[0].user_attrs["resume_folder"]) / "checkpoint.pt"
    assert checkpoint.exists()

    second = submit(tmp_path, database, study, spec, "1")
    wait_for(second, tmp_path)
    assert set(exit_codes(second).values()) == {"COMPLETED 0:0"}, logs(tmp_path)
    found = trials(database, study)
    complete = [t for t in found if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2, logs(tmp_path)  # the budget, exactly: the retry replaced it
    retry = next(t for t in complete if t.user_attrs.get("retry_of") == cut[0].number)
    outcome = retry.user_attrs["outcome"]
    assert outcome["resumed_from"] == cut[0].number and outcome["resumed_epoch"] > 0
    assert not checkpoint.exists()  # the finished retry removed what it continued from
