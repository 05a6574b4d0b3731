"""Runtime faults, one case each: the search finishes its budget, nothing finished is lost,
no trial is left RUNNING, and each failed trial carries a reason the report shows."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import hpsearch.objective as objective
import hpsearch.stacked as stacked
import hpsearch.train as train
from hpsearch.engine import RunOptions, run_spec
from hpsearch.progress import SilentProgress
from hpsearch.runs import read_json
from tests.test_engine import SLOW_SEARCH, _running_trial_folders, _wait_for, spec_file, states


def run_with_fault(tmp_path, monkeypatch, fault, trials=4, **search):
    """Run a small search where trial 1 meets `fault`; return the summary."""
    spec = spec_file(
        tmp_path,
        {
            "trials": trials,
            "workers": 1,
            "space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
            **search,
        },
    )
    fault(monkeypatch, tmp_path / "runs")
    result = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"))
    assert "RUNNING" not in states(result.run.root)
    return result.summary


def victim_seed(runs: Path) -> int | None:
    """The seed trial 1 trains with (its params.json is written before it trains)."""
    found = list(runs.glob("*/trials/1/params.json"))
    return read_json(found[0])["seed"] if found else None


def raising_in_trial_one(exc: BaseException):
    """A fault: training trial 1 raises `exc` (and so does a stack it is in, whose trials are
    then retried one at a time); the other trials train as usual."""

    def fault(monkeypatch, runs):
        real = objective.train

        def faulty(members, data, hooks=None, device=None):
            if victim_seed(runs) in [m.seed for m in members]:
                raise exc
            return real(members, data, hooks, device)

        monkeypatch.setattr(objective, "train", faulty)

    return fault


def loss_in_trial_one(factor: float):
    """A fault: trial 1's training losses are multiplied by inf or nan, alone or as a member
    of a stack (its rows of the stack's losses, while it is in the stack)."""

    def fault(monkeypatch, runs):
        real_train, real_losses = train.train, train.example_losses
        where = {"position": None, "size": 0, "members": 0}

        def watching(members, data, hooks=None, device=None):
            seeds = [m.seed for m in members]
            victim = victim_seed(runs)
            where.update(position=seeds.index(victim) if victim in seeds else None)
            where.update(size=len(members))
            return real_train(members, data, hooks, device)

        forward = stacked.StackedMLP.__call__

        def counting_forward(self, x):
            where["members"] = self.members
            return forward(self, x)

        def losses(loss, outputs, y, task):
            values = real_losses(loss, outputs, y, task)
            training = not torch.is_inference_mode_enabled()
            if not training or where["position"] is None or where["members"] != where["size"]:
                return values
            rows = values.view(where["size"], -1).clone()
            rows[where["position"]] = rows[where["position"]] * factor
            return rows.reshape(-1)

        monkeypatch.setattr(train, "train", watching)
        monkeypatch.setattr(objective, "train", watching)
        monkeypatch.setattr(train, "example_losses", losses)
        monkeypatch.setattr(stacked.StackedMLP, "__call__", counting_forward)

    return fault


def fault_disk(monkeypatch, runs):
    real = objective.write_json

    def write(path, payload):
        if Path(path).parent.name == "1":
            # a disk that refuses one trial's file (a full disk stops the run instead:
            # test_a_full_disk_stops_the_run_cleanly_and_resume_finishes_it)
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real(path, payload)

    monkeypatch.setattr(objective, "write_json", write)


FAULTS = {
    "exception-in-trial": (
        raising_in_trial_one(ValueError("boom in the model")),
        "error: ValueError: boom in the model",
    ),
    "cuda-out-of-memory": (raising_in_trial_one(torch.cuda.OutOfMemoryError("CUDA OOM")), "oom"),
    "infinite-loss": (loss_in_trial_one(float("inf")), "diverged"),
    "nan-loss": (loss_in_trial_one(float("nan")), "diverged"),
    "disk-refuses-writes": (fault_disk, "disk: Input/output error"),
}


@pytest.mark.parametrize("stack", ["off", 4])
@pytest.mark.parametrize("case", list(FAULTS))
def test_runtime_fault_fails_one_trial_with_a_reason(tmp_path, monkeypatch, case, stack):
    fault, reason = FAULTS[case]
    summary = run_with_fault(tmp_path, monkeypatch, fault, stack=stack)
    by_number = {t["number"]: t for t in summary["trials"]}
    assert by_number[1]["state"] == "failed"
    assert by_number[1]["reason"].startswith(reason)
    assert summary["counts"]["complete"] == 3  # the budget is still spent on the others
    assert summary["best"] is not None
    # a diverging member leaves its stack; any other fault sends the stack's trials solo
    trained_in_stack = stack == 4 and reason == "diverged"
    assert {t["stack"] for t in summary["trials"]} == ({4} if trained_in_stack else {1})


def test_exploding_gradients_without_clipping_diverge(tmp_path):
    spec = spec_file(
        tmp_path,
        {"strategy": "grid", "workers": 1, "space": {"train.grad_clip": {"values": [None, 1.0]}}},
        train={"lr": 1000.0, "optimizer": "momentum"},
    )
    summary = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).summary
    reasons = {str(t["params"]["train.grad_clip"]): t["reason"] for t in summary["trials"]}
    assert reasons["None"] == "diverged"


def start_slow_run(tmp_path, epochs=300, **popen) -> tuple[Path, Path, subprocess.Popen]:
    """A caviar run that trains long enough to be stopped mid-trial: spec, runs dir, process."""
    spec = spec_file(tmp_path, SLOW_SEARCH, train={"epochs": epochs, "early_stopping": None})
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "hpsearch", "run", str(spec), "--runs-dir", str(runs)]
    return spec, runs, subprocess.Popen(command, **popen)


def test_second_ctrl_c_exits_at_once(tmp_path):
    spec, runs, proc = start_slow_run(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert _wait_for(lambda: _running_trial_folders(runs))
    started = time.time()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    # at once, not after the trials (the whole run takes about half a minute on 2 cores;
    # the bound leaves room for a loaded machine's process exit)
    assert time.time() - started < 10


def test_stale_journal_lock_is_taken_over(tmp_path):
    """A process SIGKILLed while holding the journal lock leaves it; others wait out the grace
    period, then go on."""
    spec = spec_file(
        tmp_path,
        {
            "trials": 2,
            "workers": 1,
            "space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
        },
    )
    first = run_spec(spec, RunOptions(runs_dir=tmp_path / "runs")).run
    lock = first.root / "study.log.lock"
    os.symlink(first.root / "study.log", lock)  # what a killed holder leaves behind
    env = {**os.environ, "HPSEARCH_JOURNAL_GRACE_SECONDS": "2"}
    started = time.time()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpsearch",
            "run",
            str(spec),
            "--runs-dir",
            str(tmp_path / "runs"),
            "--resume",
            "latest",
            "--trials",
            "3",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert time.time() - started < 60
    assert states(first.root).count("COMPLETE") == 3


class MemoryProbe(SilentProgress):
    def __init__(self):
        self.rss: list[int] = []

    def trial_finished(self, outcome, status=None):
        with open("/proc/self/statm") as handle:
            self.rss.append(int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_memory_stays_flat_over_300_tiny_trials(tmp_path):
    spec = spec_file(
        tmp_path,
        {
            "trials": 300,
            "workers": 1,
            "space": {"train.lr": {"low": 1e-3, "high": 1e-1, "log": True}},
        },
        train={"epochs": 1},
    )
    probe = MemoryProbe()
    run_spec(spec, RunOptions(runs_dir=tmp_path / "runs"), probe)
    assert len(probe.rss) == 300
    growth_per_trial = (probe.rss[-1] - probe.rss[49]) / 250  # after warm-up
    assert growth_per_trial < 0.5 * 2**20


# --- round 2: hostile files, damaged run folders, one owner per run ---------------------------


def cli(*args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hpsearch", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def refused(result: subprocess.CompletedProcess, *said: str) -> None:
    """Exit 2 with one clear message that says `said`, never a traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for words in said:
        assert words in result.stderr, result.stderr


@pytest.mark.parametrize("kind", ["fifo", "device", "symlink-loop"])
def test_a_data_source_that_is_no_regular_file_is_refused_without_hanging(tmp_path, kind):
    data = tmp_path / "data.csv"
    if kind == "fifo":
        os.mkfifo(data)  # reading it would block for ever
    elif kind == "device":
        data.symlink_to("/dev/zero")  # reading it would never end
    else:
        (tmp_path / "other.csv").symlink_to(data)
        data.symlink_to(tmp_path / "other.csv")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: t\ndata: {source: data.csv, target: y}\n")
    for command in ("validate", "run"):
        result = cli(
            command, spec, *(["--runs-dir", tmp_path / "runs"] if command == "run" else [])
        )
        expected = "symbolic links" if kind == "symlink-loop" else "not a regular file"
        refused(result, "data.csv", expected)
    assert not (tmp_path / "runs").exists()


def test_runs_dirs_that_cannot_hold_a_run_are_refused(tmp_path):
    spec = spec_file(tmp_path, {"trials": 1, "space": {"train.lr": {"choices": [0.01]}}})
    refused(cli("run", spec, "--runs-dir", "/proc/1"), "cannot create a run folder")
    refused(cli("run", spec, "--runs-dir", "/proc/1/nope"), "cannot create the runs directory")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)])
    try:
        if mounted.returncode == 0:  # a real read-only filesystem where we may mount one
            refused(cli("run", spec, "--runs-dir", readonly), "Read-only file system")
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", str(readonly)])
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    refused(cli("runs", "--runs-dir", a_file), "is a file, not a folder of runs")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished three-trial run, copied afresh for each damage."""
    root = tmp_path_factory.mktemp("finished")
    spec = spec_file(
        root, {"trials": 3, "workers": 1, "space": {"train.lr": {"low": 1e-3, "high": 0.1}}}
    )
    result = run_spec(spec, RunOptions(runs_dir=root / "runs"))
    return spec, result.run.root


def damaged(tmp_path, finished_run, damage):
    import shutil

    spec, original = finished_run
    run = tmp_path / "runs" / original.name
    shutil.copytree(original, run)
    damage(run)
    return spec, run


def _truncate(path: Path) -> None:
    path.write_text(path.read_text()[:50])


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda run: _truncate(run / "summary.json"), id="summary-truncated"),
        pytest.param(lambda run: (run / "summary.json").write_text("[1, 2, 3]"), id="summary-list"),
    ],
)
def test_a_damaged_summary_is_rewritten_by_resume_and_refused_by_report(
    tmp_path, finished_run, damage
):
    spec, run = damaged(tmp_path, finished_run, damage)
    refused(cli("report", run), "summary.json", "--resume")
    resumed = cli("run", spec, "--resume", run, "--trials", "4")
    assert resumed.returncode == 0, resumed.stderr
    assert "summary.json is damaged; it is rewritten" in resumed.stderr
    assert read_json(run / "summary.json")["state"] == "finished"
    assert cli("report", run).returncode == 0


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        pytest.param(
            lambda run: (run / "study.log").unlink(), "journal is missing", id="journal-deleted"
        ),
        pytest.param(
            lambda run: (run / "study.log").write_bytes(b""), "journal is empty", id="journal-empty"
        ),
        pytest.param(
            lambda run: (run / "study.log").open("a").write('{"op_code": 99, "worker_id": "x"}\n'),
            "cannot be read back",
            id="journal-unknown-op",
        ),
    ],
)
def test_a_journal_that_cannot_resume_is_refused_and_nothing_is_overwritten(
    tmp_path, finished_run, damage, said
):
    spec, run = damaged(tmp_path, finished_run, damage)
    before = {p: p.read_bytes() for p in run.glob("trials/*/result.json")}
    refused(cli("run", spec, "--resume", run, "--trials", "5"), said)
    assert {p: p.read_bytes() for p in run.glob("trials/*/result.json")} == before


def test_damaged_best_weights_finish_the_run_with_a_warning(tmp_path, finished_run):
    spec, run = damaged(tmp_path, finished_run, lambda run: None)
    best = read_json(run / "summary.json")["best"]["trial"]
    (run / "trials" / str(best) / "model.pt").write_bytes(b"junk")
    resumed = cli("run", spec, "--resume", run, "--trials", "3")
    assert resumed.returncode == 0, resumed.stderr
    assert "weights cannot be loaded" in resumed.stderr and "Traceback" not in resumed.stderr
    summary = read_json(run / "summary.json")
    assert summary["state"] == "finished" and "test_error" not in summary["best"]["metrics"]


def test_one_resumer_at_a_time_and_a_killed_run_reads_as_killed(tmp_path):
    spec, runs, proc = start_slow_run(
        tmp_path, epochs=20000, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert _wait_for(lambda: _running_trial_folders(runs))
        (run,) = runs.iterdir()
        second = cli("run", spec, "--resume", run, "--trials", "3")
        refused(second, "this run is being run by process", str(proc.pid))
        assert "running" in cli("runs", "--runs-dir", runs).stdout
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole run, workers too, without a word
        proc.wait()
    listed = cli("runs", "--runs-dir", runs)
    assert "killed (resumable)" in listed.stdout


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in found.split()]


def _workers_of(pid: int) -> list[int]:
    """The worker processes a run started: forked by its fork server (spawned by the run
    itself where there is none); not multiprocessing's resource tracker, which outlives the
    run by design."""
    workers = []
    for child in _children(pid):
        command = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"forkserver" in command:
            workers += _children(child)
        elif b"spawn_main" in command:
            workers.append(child)
    return workers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    return not (state.exists() and state.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.parametrize("stop", [signal.SIGHUP, signal.SIGTERM])
def test_sighup_and_sigterm_stop_a_caviar_run_like_ctrl_c(tmp_path, stop):
    spec, runs, proc = start_slow_run(tmp_path, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: _running_trial_folders(runs))
    workers = _workers_of(proc.pid)
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "resume with: hpsearch run" in err
    (run,) = runs.iterdir()
    assert read_json(run / "summary.json")["state"] == "interrupted"
    assert "RUNNING" not in states(run)
    assert workers and not any(_alive(w) for w in workers)


def test_workers_never_outlive_a_killed_planner(tmp_path):
    """SIGKILL of the run alone (not its process group): the kernel stops its workers at once,
    mid-trial (20,000 epochs would keep them busy for minutes), and they record their trials
    as interrupted, so the run resumes from them."""
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:  # the workers' too: what they said on the way out
        _, runs, proc = start_slow_run(tmp_path, epochs=20000, stderr=stderr)
    assert _wait_for(lambda: _running_trial_folders(runs))
    workers = _workers_of(proc.pid)
    assert workers
    proc.kill()
    proc.wait()
    assert _wait_for(lambda: not any(_alive(w) for w in workers), timeout=15)
    (run,) = runs.iterdir()
    # interrupted: the workers said so before they went
    assert set(states(run)) == {"FAIL"}, (workers, log.read_text()[-4000:])


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MB filesystem (tmpfs), where this machine lets us mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_a_full_disk_stops_the_run_cleanly_and_resume_finishes_it(tmp_path, small_disk):
    """[512, 512] models (1.2 MB of weights each) fill 3 MB after two trials: the run stops
    with one message (exit 1), leaves no half-written file, and once there is room the
    resume retries what the disk refused without counting it against the budget."""
    import shutil

    spec = spec_file(
        tmp_path,
        {"trials": 6, "workers": 1, "space": {"train.lr": {"low": 1e-3, "high": 0.1}}},
        train={"epochs": 2},
    )
    spec.write_text(spec.read_text().replace("- 8", "- 512\n  - 512"))
    result = cli("run", spec, "--runs-dir", small_disk)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "disk full at" in result.stderr and "--resume" in result.stderr
    (run,) = small_disk.iterdir()
    assert not list(run.rglob(".*.tmp"))  # no half-written file
    for model in run.glob("trials/*/model.pt"):
        torch.load(model, weights_only=True)  # every weights file there is whole
    assert "RUNNING" not in states(run)
    moved = tmp_path / "roomy" / run.name
    shutil.copytree(run, moved)
    resumed = cli("run", spec, "--resume", moved, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    summary = read_json(moved / "summary.json")
    assert summary["state"] == "finished" and summary["counts"]["complete"] == 6


def test_a_run_whose_spec_was_deleted_is_still_listed_and_resumable(tmp_path, finished_run):
    spec, run = damaged(tmp_path, finished_run, lambda run: (run / "spec.yaml").unlink())
    assert run.name in cli("runs", "--runs-dir", run.parent).stdout
    resumed = cli("run", spec, "--resume", run, "--trials", "4")
    assert resumed.returncode == 0, resumed.stderr
    assert "spec.yaml is missing; resuming with the spec given" in resumed.stderr
    assert (run / "spec.yaml").is_file()
    assert read_json(run / "summary.json")["counts"]["complete"] == 4
