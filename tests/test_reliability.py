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
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
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
    "disk-refuses-writes": (fault_disk, "disk: No space left on device"),
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


def test_second_ctrl_c_exits_at_once(tmp_path):
    spec = spec_file(tmp_path, SLOW_SEARCH, train={"epochs": 300, "early_stopping": None})
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpsearch", "run", str(spec), "--runs-dir", str(runs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert _wait_for(lambda: _running_trial_folders(runs))
    started = time.time()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert time.time() - started < 5


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
